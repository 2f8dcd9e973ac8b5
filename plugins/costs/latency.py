"""Cost model ``latency``: milliseconds per batch, from per-layer times measured in context and a
calibration fitted on measured whole networks.

``dnax profile PIPELINE.toml`` (see :mod:`dnax.plugins.measure.profile`) builds random whole
networks of the space (enough for every distinct layer op, stem and head to run in at least a
few of them), times each layer inside them as it runs there (after its predecessor, on its
output), and fits ``measured ~ scale * Σ parts + per_layer_ms * layers + offset_ms`` on the
same networks' end-to-end times. It writes a JSON table::

    {"format": "dnax-latency", "format_version": 2, "device": "<entry last measured>",
     "devices": {"<entry>": {"device": "<device name>", "runtime": "torch", "batch_size": 1,
                             "resolution": 224, "threads": 1, "protocol": {...}, ...,
                             "ops": {"<op key>": ms, ...}, "fixed": {"<key>": ms, ...},
                             "calibration": {"scale": a, "per_layer_ms": b, "offset_ms": c,
                                             ...}}}}

An entry is named after its device (``"AMD EPYC"``) and, for another runtime than torch, the
runtime (``"AMD EPYC [onnxruntime]"``). An op key is the layer's :attr:`LayerSig.key` (arch
string, input width and size, first in its stage or not) plus the batch size, e.g.
``ir_r1_k5_s2_e6_c40_se0.25@24x56|b1``; the stem (with the unsearched stages) and the head have
keys of their own, so a table measured for another stem, head, resolution or batch size is never
used silently.

The prediction stays additive: a layer costs ``scale * ms + per_layer_ms``, the fixed part
``scale * (stem + head) + offset_ms``, so the exact selector's per-candidate costs add up to the
calibrated whole-network prediction.
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
from .runtimes import measure_model

#: ``format`` and ``format_version`` of a latency table
KIND = "dnax-latency"
VERSION = 2


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
    return {
        "stem": f"stem:{model.in_chans}x{res}>c{model.conv_stem.out_channels}:{act}:{stages}"
                f"|b{batch_size}",
        "head": head_key(ctx, model, model.conv_head.in_channels, blocks, batch_size),
    }


def head_key(ctx: dnax.StageContext, model: EfficientNet, width: int,
             blocks: Sequence[dnax.BlockSpec], batch_size: int) -> str:
    """The table key of ``model``'s head after a last block ``width`` channels wide."""
    act = str(ctx.plugins.space.model_kwargs().get("act_layer") or "relu")
    return (f"head:{width}x{blocks[-1].out_size}>c{model.num_features}>{model.num_classes}:"
            f"{act}|b{batch_size}")


def entry_key(device: str, runtime: str) -> str:
    """The name of a table entry: the device's, with the runtime for any but torch."""
    return device if runtime == "torch" else f"{device} [{runtime}]"


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
            and _calibration_ok(e.get("calibration")) for e in devices.values()):
        raise dnax.ArtifactError(f"{path}: malformed latency table (each entry of 'devices' "
                                 "needs batch_size, ops, fixed and calibration with scale, "
                                 "per_layer_ms and offset_ms); re-run `dnax profile`")
    return data


def _calibration_ok(cal: Any) -> bool:
    return isinstance(cal, dict) and all(
        isinstance(cal.get(k), int | float) and not isinstance(cal.get(k), bool)
        for k in ("scale", "per_layer_ms", "offset_ms"))


def device_entry(table: Mapping[str, Any], device: str | None, path: str | Path,
                 runtime: str | None = None) -> tuple[str, dict[str, Any]]:
    """(entry name, its measurements) for ``device`` and ``runtime``: by default the entry the
    table was last measured in; a device alone picks its torch entry, or its only one; a runtime
    alone picks that runtime on the device last measured."""
    devices = table["devices"]
    last = table.get("device")
    if last is None and len(devices) == 1:
        last = next(iter(devices))
    if device is None and runtime is None:
        name = last
    elif device is not None and device in devices and (
            runtime is None or devices[device].get("runtime", "torch") == runtime):
        name = device
    else:
        if device is None:
            device = devices[last].get("device", last) if last in devices else None
        mine = {k: e for k, e in devices.items() if e.get("device", k) == device}
        if runtime is not None:
            name = next((k for k, e in mine.items() if e.get("runtime", "torch") == runtime),
                        None)
        elif last in mine:
            name = last
        else:
            name = next((k for k, e in mine.items() if e.get("runtime", "torch") == "torch"),
                        next(iter(mine), None))
    if name not in devices:
        known = ", ".join(repr(d) for d in devices) or "none"
        what = (f"device {device!r}" if device is not None else "a default device") + (
            f" with runtime {runtime!r}" if runtime is not None else "")
        raise dnax.ArtifactError(f"{path}: no measurements for {what} (it has: {known}); "
                                 "run `dnax profile` on that device or set device")
    return name, devices[name]


# --- the cost model --------------------------------------------------------------------------

class Latency(TableCost, dnax.NetworkTimer):
    """Latency in milliseconds per batch on one device, from a table `dnax profile` measured:
    each candidate's layers looked up by op (adapters excluded), plus stem, unsearched stages
    and head.

    ``device`` names a table entry: a device (its torch measurements) or a device and runtime
    (``"AMD EPYC [onnxruntime]"``). The parts' sum goes through the entry's calibration.
    Additive like the lookup tables of FBNet, ProxylessNAS and OFA, but each op is timed inside
    whole networks (where it runs after its predecessor) and the sum is calibrated on measured
    whole networks (``scale * Σ + per_layer_ms * layers + offset_ms``);
    ``dnax profile --check K`` measures the error on networks the fit did not see.
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
        """(entry name, its measurements) from the configured table."""
        return device_entry(read_table(self.config.table), self.config.device, self.config.table)

    @property
    def calibration(self) -> tuple[float, float, float]:
        """(scale, per_layer_ms, offset_ms) of the table's entry."""
        cal = self.entry[1]["calibration"]
        return float(cal["scale"]), float(cal["per_layer_ms"]), float(cal["offset_ms"])

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
        scale, per_layer, _ = self.calibration
        ms = self.lookup(ctx, "ops", op_key(sig, self.batch_size))
        return scale * ms + per_layer, out_size(sig)

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        scale, _, offset = self.calibration
        keys = self.keys(ctx, model, n_fixed, blocks, self.batch_size)
        return scale * sum(self.lookup(ctx, "fixed", k) for k in keys.values()) + offset

    def measure_network(self, ctx: dnax.StageContext, model: nn.Module) -> dict[str, Any]:
        """``model`` (a whole network of the space) timed end to end as the table's check
        times networks: same device, runtime, threads, batch size and protocol. Returns
        ``{"ms": ..., "repeats": ..., "stable": ...}``, or ``{"skipped": reason}`` where this
        machine is not the table's device."""
        return measure_model(ctx, model, self.entry[1])


@dnax.hookimpl
def dnax_register_costs(register):
    register("latency", Latency)
