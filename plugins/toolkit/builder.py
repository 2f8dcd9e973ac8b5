"""One builder: timm arch strings and arch defs to the timm layers and the timm ``EfficientNet``.

Every network dnax trains, counts, times, retrains or exports is built here, so the layer a
supernet trains, the layer a cost model counts and the layer of the retrained network are the
same timm module. ``model_kwargs`` are the other arguments of timm's ``EfficientNet``
(``stem_size``, ``num_features``, ``act_layer`` as a timm name, ...): JSON-serialisable, as a
search space's ``model_kwargs()`` returns them and ``model.json`` stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

import dnax

#: keyword arguments of ``EfficientNet`` that are layers, and timm's resolver of their names
_LAYER_KEYS = ("act_layer", "norm_layer")


def resolve_kwargs(model_kwargs: Mapping[str, Any], where: str = "model_kwargs"
                   ) -> dict[str, Any]:
    """``model_kwargs`` with layer names resolved to timm layers (``"swish"`` -> ``nn.SiLU``);
    an unknown name is a one-line ConfigError naming ``where``."""
    from timm.layers import get_act_layer, get_norm_layer

    resolvers = {"act_layer": get_act_layer, "norm_layer": get_norm_layer}
    out = dict(model_kwargs)
    for key in _LAYER_KEYS:
        if isinstance(out.get(key), str):
            try:
                out[key] = resolvers[key](out[key])
            except (KeyError, ValueError, AssertionError) as e:
                raise dnax.ConfigError(f"{where}.{key}: unknown timm layer {out[key]!r} "
                                       f"({e})") from None
    return out


def decode(arch_def: Sequence[Sequence[str]], depth_multiplier: float = 1.0,
           where: str = "arch_def") -> list[list[dict[str, Any]]]:
    """timm's ``decode_arch_def`` of an arch def (one list of arch strings per stage)."""
    from timm.models._efficientnet_builder import decode_arch_def

    try:
        return decode_arch_def([list(stage) for stage in arch_def], depth_multiplier)
    except Exception as e:
        raise dnax.ConfigError(f"{where}: not a timm arch def ({type(e).__name__}: {e})"
                               ) from None


def make_builder(model_kwargs: Mapping[str, Any]) -> Any:
    """An ``EfficientNetBuilder`` set up as ``EfficientNet(**model_kwargs)`` sets up its own."""
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import EfficientNetBuilder, round_channels

    kw = resolve_kwargs(model_kwargs)
    return EfficientNetBuilder(
        output_stride=kw.get("output_stride", 32),
        pad_type=kw.get("pad_type", ""),
        round_chs_fn=kw.get("round_chs_fn", round_channels),
        act_layer=kw.get("act_layer") or nn.ReLU,
        norm_layer=kw.get("norm_layer") or nn.BatchNorm2d,
        aa_layer=kw.get("aa_layer"),
        se_layer=kw.get("se_layer") or SqueezeExcite,
        drop_path_rate=kw.get("drop_path_rate", 0.0),
    )


def build_layer(arch: str, in_chs: int, model_kwargs: Mapping[str, Any], *, first: bool = True
                ) -> tuple[nn.Module, int]:
    """One arch string built as timm builds it inside a stage of the network, and its output
    width. A layer that is not first in its stage has its stride forced to 1, as timm's
    builder does."""
    stage = decode([[arch]], where=f"arch string {arch!r}")[0]
    if not first:
        stage[0]["stride"] = 1
    builder = make_builder(model_kwargs)
    module = builder(in_chs, [stage])[0][0]
    return module, int(builder.in_chs)


def build_network(arch_def: Sequence[Sequence[str]], num_classes: int,
                  model_kwargs: Mapping[str, Any], *, depth_multiplier: float = 1.0,
                  where: str = "arch_def", **overrides: Any) -> nn.Module:
    """The timm ``EfficientNet`` of ``arch_def`` (``overrides``: drop_rate, drop_path_rate...);
    what timm cannot build is a one-line ConfigError naming ``where``."""
    from timm.models.efficientnet import EfficientNet

    blocks = decode(arch_def, depth_multiplier, where)
    try:
        return EfficientNet(blocks, num_classes=num_classes,
                            **{**resolve_kwargs(model_kwargs), **overrides})
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, IndexError) as e:
        raise dnax.ConfigError(f"{where}: timm cannot build it ({type(e).__name__}: {e})"
                               ) from None


def round_width(chs: float, model_kwargs: Mapping[str, Any] | None = None) -> int:
    """``chs`` rounded as the network's builder rounds channels (timm: to a multiple of 8)."""
    from timm.models._efficientnet_builder import round_channels

    return int(dict(model_kwargs or {}).get("round_chs_fn", round_channels)(chs))


def stem_width(model_kwargs: Mapping[str, Any]) -> int:
    """Output channels of the network's stem conv."""
    kw = dict(model_kwargs)
    stem = kw.get("stem_size", 32)
    return int(stem) if kw.get("fix_stem", False) else round_width(stem, kw)


def out_width(arch: str, model_kwargs: Mapping[str, Any]) -> int:
    """The output width of a layer's arch string after the network's channel rounding."""
    return round_width(decode([[arch]])[0][-1]["out_chs"], model_kwargs)


def stages_out_width(arch_def: Sequence[Sequence[str]], model_kwargs: Mapping[str, Any]) -> int:
    """The width leaving the stem and the stages of ``arch_def`` (the stem's when empty)."""
    width = stem_width(model_kwargs)
    for stage in arch_def:
        width = out_width(stage[-1], model_kwargs)
    return width
