"""The base shared by the layer-wise cost models.

A candidate's cost is the sum of its layers' costs; each layer is built once per *signature*
(arch string, input width, input size, first-in-stage) by :mod:`dnax.plugins.toolkit.builder`,
the builder of every network dnax trains and retrains, so the layer is the one the final
network holds.

Additivity: a block's first layer takes the previous block's output width. When every cell of
a block has the same width (the default, and the paper's preset) that width is fixed and costs
add up exactly; when cells of a block differ in width, the next block's costs (or the head's)
depend on which cell is chosen and no per-candidate cost exists: the cost models raise a
:class:`dnax.ConfigError` saying so rather than return a wrong figure.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from attrs import frozen
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax
from dnax.plugins.toolkit.builder import (
    build_layer,
    build_network,
    decode,
    out_width,
    stages_out_width,
)


@frozen
class LayerSig:
    """What decides one layer's cost; ``key`` names it in lookup tables (e.g. latency)."""

    arch: str
    in_chs: int
    in_size: int
    first: bool

    @property
    def key(self) -> str:
        return f"{self.arch}@{self.in_chs}x{self.in_size}{'' if self.first else ':inner'}"


def out_size(sig: LayerSig) -> int:
    """The output size of a layer as timm's padding gives it (``ceil(size / stride)``)."""
    stride = decode([[sig.arch]])[0][0]["stride"] if sig.first else 1
    return -(-sig.in_size // stride)


def searched_blocks(ctx: dnax.StageContext) -> tuple[dnax.BlockSpec, ...]:
    teacher = ctx.results.get("teacher")
    return tuple(teacher.blocks) if teacher is not None else ctx.plugins.teacher.blocks(
        ctx.resolution)


class LayerwiseCost(dnax.CostModel):
    """Base of exact additive cost models: per candidate, the sum of its layers' costs.

    Subclasses give :meth:`layer_cost` (one layer) and :meth:`fixed_part` (the network minus its
    searched stages). A table-driven model (latency) can override :meth:`layer_cost` to look up
    ``sig.key`` instead of building the layer.
    """

    def __init__(self, config: Any):
        super().__init__(config)
        self._layers: dict[tuple[str, LayerSig], tuple[float, int, int]] = {}
        self._candidates: dict[tuple[str, int], Sequence[dnax.Candidate]] = {}

    @abstractmethod
    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        """The cost of ``layer`` (built from ``sig``) and its output size in pixels."""

    @abstractmethod
    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        """The cost of ``model`` without ``model.blocks[n_fixed:]`` (stem, fixed stages, head)."""

    # --- the contract -------------------------------------------------------------------

    def candidate_costs(self, ctx: dnax.StageContext, block: dnax.BlockSpec,
                        candidates: Sequence[dnax.Candidate]) -> np.ndarray:
        space = ctx.plugins.space
        kwargs = space.model_kwargs()
        in_chs = self.block_in_chs(ctx, searched_blocks(ctx), block.index)
        out = np.empty(len(candidates), dtype=np.float64)
        for n, cand in enumerate(candidates):
            chs, size, total = in_chs, block.in_size, 0.0
            for j, arch in enumerate(cand.arch):
                cost, chs, size = self._layer(ctx, LayerSig(arch, chs, size, j == 0), kwargs)
                total += cost
            out[n] = total
        return out

    def fixed_cost(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec]) -> float:
        blocks = tuple(blocks)
        if blocks:
            self.uniform_width(ctx, blocks[-1], "the head")
        model, n_fixed = self.reference_network(ctx, blocks)
        return float(self.fixed_part(ctx, model, n_fixed, blocks))

    # --- helpers ------------------------------------------------------------------------

    def candidates(self, ctx: dnax.StageContext, block: dnax.BlockSpec
                   ) -> Sequence[dnax.Candidate]:
        key = (ctx.plugins.space.fingerprint(), block.index)
        if key not in self._candidates:
            self._candidates[key] = ctx.plugins.space.candidates(block)
        return self._candidates[key]

    def uniform_width(self, ctx: dnax.StageContext, block: dnax.BlockSpec, user: str) -> int:
        """The one output width of ``block``'s cells; a ConfigError when cells differ."""
        kwargs = ctx.plugins.space.model_kwargs()
        last = {c.arch[-1] for c in self.candidates(ctx, block)}
        widths = sorted({out_width(a, kwargs) for a in last})
        if len(widths) != 1:
            raise dnax.ConfigError(
                f"$.costs: {self.metric}: the cells of block {block.index} differ in width "
                f"({', '.join(map(str, widths))}), so the cost of {user} depends on the cell "
                "chosen and is not additive; give every cell of a block the same width")
        return widths[0]

    def block_in_chs(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                     index: int) -> int:
        """The width entering searched block ``index`` in the final network."""
        if index > 0:
            return self.uniform_width(ctx, blocks[index - 1], f"block {index}")
        chosen = [self.candidates(ctx, b)[0] for b in blocks]
        arch = ctx.plugins.space.arch_def(blocks, chosen)
        return stages_out_width(arch[: len(arch) - len(blocks)], ctx.plugins.space.model_kwargs())

    def reference_network(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec]
                          ) -> tuple[EfficientNet, int]:
        """The whole network with each block's first candidate, and its number of fixed stages."""
        space = ctx.plugins.space
        chosen = [self.candidates(ctx, b)[0] for b in blocks]
        arch = space.arch_def(blocks, chosen)
        model = build_network(arch, ctx.plugins.data.num_classes, space.model_kwargs())
        return model.eval(), len(arch) - len(blocks)

    def _layer(self, ctx: dnax.StageContext, sig: LayerSig, kwargs: Mapping[str, Any]
               ) -> tuple[float, int, int]:
        key = (ctx.plugins.space.fingerprint(), sig)
        if key not in self._layers:
            layer, out_chs = build_layer(sig.arch, sig.in_chs, kwargs, first=sig.first)
            layer.eval()
            with torch.no_grad():
                cost, out_size = self.layer_cost(ctx, layer, sig)
            self._layers[key] = (float(cost), out_chs, int(out_size))
        return self._layers[key]


def stem_part(model: EfficientNet, n_fixed: int) -> Any:
    """The network up to its first searched block: stem conv and the unsearched stages."""
    return lambda x: model.blocks[:n_fixed](model.bn1(model.conv_stem(x)))


def head_part(model: EfficientNet) -> Any:
    """The network after its last searched block: head conv, pooling, classifier."""
    return lambda x: model.forward_head(model.bn2(model.conv_head(x)))


def searched_stages(model: EfficientNet, n_fixed: int, blocks: Sequence[dnax.BlockSpec],
                    x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Run ``x`` (the stem's output) through the searched stages, checking that every block
    sees the spatial size the teacher's block does; the input of the head."""
    with torch.inference_mode():
        for spec, stage in zip(blocks, model.blocks[n_fixed:], strict=True):
            if x.shape[-1] != spec.in_size:
                raise dnax.ConfigError(
                    f"$.space: block {spec.index} sees {x.shape[-1]} px in the network built at "
                    f"resolution {resolution}, but the teacher's block takes {spec.in_size} px; "
                    "the space's stem must reduce as the teacher's does")
            x = stage(x)
    if x.shape[-1] != blocks[-1].out_size:
        raise dnax.ConfigError(
            f"$.space: the head sees {x.shape[-1]} px in the network built at resolution "
            f"{resolution}, but the teacher's last block gives {blocks[-1].out_size} px")
    return x
