"""Cost model ``latency``: milliseconds per batch, looked up per layer op in a measured table.

``dnax profile PIPELINE.toml`` (see :mod:`dnax.plugins.costs.profile`) times every distinct layer
op of the space and the fixed parts on one device and writes a JSON table::

    {"format": "dnax-latency", "format_version": 1, "device": "<last device measured>",
     "devices": {"<device name>": {"batch_size": 1, "resolution": 224, "threads": 16, ...,
                                   "ops": {"<op key>": ms, ...}, "fixed": {"<key>": ms, ...}}}}

An op key is the layer's :attr:`LayerSig.key` (arch string, input width and size, first in its
stage or not) plus the batch size, e.g. ``ir_r1_k5_s2_e6_c40_se0.25@24x56|b1``; the stem (with
the unsearched stages) and the head have keys of their own, so a table measured for another
stem, head, resolution or batch size is never used silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from attrs import field, frozen
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax

from .common import LayerSig, LayerwiseCost, out_size

#: ``format`` and ``format_version`` of a latency table
KIND = "dnax-latency"
VERSION = 1


def _table_file(_inst: Any, _attr: Any, value: Path) -> None:
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value} (measure it with `dnax profile PIPELINE.toml`)")


@frozen
class LatencyConfig:
    """Latency per batch from a table measured by `dnax profile` on the target device."""

    table: Path = field(validator=_table_file, metadata={
        "help": "latency table written by `dnax profile` (JSON; relative to the TOML)"})
    device: str | None = field(default=None, metadata={
        "help": "device whose measurements to use (default: the one the table was last "
                "measured on)"})


# --- keys ------------------------------------------------------------------------------------

def op_key(sig: LayerSig, batch_size: int) -> str:
    """The table key of one layer op at ``batch_size``."""
    return f"{sig.key}|b{batch_size}"


def fixed_keys(ctx: dnax.StageContext, model: EfficientNet, fixed_arch: Sequence[Sequence[str]],
               blocks: Sequence[dnax.BlockSpec], batch_size: int) -> dict[str, str]:
    """The table keys of the stem (stem conv + unsearched stages ``fixed_arch``) and the head
    (head conv, pooling, classifier) of ``model``, the network the cost models build."""
    if not blocks:
        raise dnax.ConfigError("$.teacher: no searched blocks, so the network has no head size")
    act = str(ctx.plugins.space.model_kwargs().get("act_layer") or "relu")
    stages = "/".join("+".join(stage) for stage in fixed_arch) or "-"
    res = ctx.resolution
    head_in = model.conv_head.in_channels
    return {
        "stem": f"stem:{model.in_chans}x{res}>c{model.conv_stem.out_channels}:{act}:{stages}"
                f"|b{batch_size}",
        "head": f"head:{head_in}x{blocks[-1].out_size}>c{model.num_features}>"
                f"{model.num_classes}:{act}|b{batch_size}",
    }


class TableCost(LayerwiseCost):
    """Base of the latency model and of the profiler: per-op and fixed-part keys."""

    metric = "latency"

    def fixed_arch(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec], n_fixed: int
                   ) -> list[list[str]]:
        """The arch strings of the unsearched stages (as :meth:`reference_network` builds)."""
        chosen = [self.candidates(ctx, b)[0] for b in blocks]
        return ctx.plugins.space.arch_def(blocks, chosen)[:n_fixed]

    def keys(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
             blocks: Sequence[dnax.BlockSpec], batch_size: int) -> dict[str, str]:
        return fixed_keys(ctx, model, self.fixed_arch(ctx, blocks, n_fixed), blocks, batch_size)


# --- the table file --------------------------------------------------------------------------

def read_table(path: str | Path) -> dict[str, Any]:
    """A latency table read and checked; every problem is one :class:`dnax.ArtifactError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise dnax.ArtifactError(f"{path}: missing (measure it with `dnax profile "
                                 "PIPELINE.toml`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise dnax.ArtifactError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != KIND:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise dnax.ArtifactError(f"{path}: not a dnax latency table (format {found!r}, "
                                 f"expected {KIND!r})")
    if data.get("format_version") != VERSION:
        raise dnax.ArtifactError(f"{path}: latency table version {data.get('format_version')}, "
                                 f"this dnax reads {VERSION}; re-run `dnax profile`")
    devices = data.get("devices")
    if not isinstance(devices, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("ops"), dict)
            and isinstance(e.get("fixed"), dict) and isinstance(e.get("batch_size"), int)
            for e in devices.values()):
        raise dnax.ArtifactError(f"{path}: malformed latency table (each entry of 'devices' "
                                 "needs batch_size, ops and fixed); re-run `dnax profile`")
    return data


def device_entry(table: Mapping[str, Any], device: str | None, path: str | Path
                 ) -> tuple[str, dict[str, Any]]:
    """(device name, its measurements): ``device``, or the one the table was last measured on."""
    devices = table["devices"]
    name = device if device is not None else table.get("device")
    if name is None and len(devices) == 1:
        name = next(iter(devices))
    if name not in devices:
        known = ", ".join(repr(d) for d in devices) or "none"
        what = f"device {name!r}" if name is not None else "a default device"
        raise dnax.ArtifactError(f"{path}: no measurements for {what} (it has: {known}); "
                                 "run `dnax profile` on that device or set device")
    return name, devices[name]


# --- the cost model --------------------------------------------------------------------------

class Latency(TableCost):
    """Latency in milliseconds per batch on one device, from a table `dnax profile` measured:
    each candidate's layers looked up by op (adapters excluded), plus stem, unsearched stages
    and head.

    Additive like the lookup tables of FBNet, ProxylessNAS and OFA: the network's latency is
    predicted as the sum of its parts' medians (on GPUs at small batches the sum runs a little
    above the whole; ``dnax profile --check K`` measures how well it ranks networks).
    """

    Config = LatencyConfig
    metric = "latency"

    @classmethod
    def check(cls, config: LatencyConfig, pipeline: Any, registry: Any) -> list[str]:
        """The table must be readable and hold the device asked for."""
        try:
            device_entry(read_table(config.table), config.device, config.table)
        except dnax.ArtifactError as e:
            return [f"table: {p}" for p in e.problems]
        return []

    @cached_property
    def entry(self) -> tuple[str, dict[str, Any]]:
        """(device name, its measurements) from the configured table."""
        return device_entry(read_table(self.config.table), self.config.device, self.config.table)

    @property
    def batch_size(self) -> int:
        return int(self.entry[1]["batch_size"])

    def lookup(self, ctx: dnax.StageContext, part: str, key: str) -> float:
        """The measured milliseconds of ``key`` in the table's ``part`` (ops or fixed)."""
        name, entry = self.entry
        ms = entry[part].get(key)
        if ms is None:
            res = entry.get("resolution")
            hint = (f" (the table was measured at {res} px, the pipeline runs at "
                    f"{ctx.resolution} px)" if res is not None and res != ctx.resolution else "")
            raise dnax.ArtifactError(
                f"{self.config.table}: no latency for {key} on {name!r}{hint}; re-run "
                "`dnax profile PIPELINE.toml` for this pipeline")
        return float(ms)

    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        return self.lookup(ctx, "ops", op_key(sig, self.batch_size)), out_size(sig)

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        keys = self.keys(ctx, model, n_fixed, blocks, self.batch_size)
        return sum(self.lookup(ctx, "fixed", k) for k in keys.values())


@dnax.hookimpl
def dnax_register_costs(register):
    register("latency", Latency)
