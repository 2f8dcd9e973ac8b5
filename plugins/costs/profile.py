"""Measure latency tables (``dnax profile``) and check them against whole networks.

:func:`profile` times every distinct layer op of a pipeline's space and the fixed parts of its
network on one device; :func:`check` builds random whole networks as the retrainer builds them,
times them end to end the same way and compares with the table's prediction. Nothing here
prints: progress goes through the registry's ``dnax_progress`` hook.

Timing: ``warmup`` untimed calls, then the median of ``repeats`` timed calls of the module in
eval mode under ``torch.inference_mode``, by :mod:`dnax.plugins.toolkit.timing`: on CUDA with
``torch.cuda.Event`` pairs, elsewhere with ``time.perf_counter`` around a synchronised call.
"""

from __future__ import annotations

import json
import platform
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from attrs import frozen
from scipy import stats
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax
from dnax.config import load_config
from dnax.plugins.toolkit.timing import time_once
from dnax.rundir import atomic_write_text

from .common import LayerSig, head_part, searched_stages, stem_part
from .latency import KIND, VERSION, Latency, LatencyConfig, TableCost, op_key, read_table

#: the pipeline tables profiling needs (costs, trainer etc. are ignored: a [[costs]] table that
#: names a latency table not yet measured must not stop its measurement)
TABLES = ("pipeline", "data", "teacher", "space")


def load_for_profile(path: str | Path, registry: Any) -> dnax.PipelineConfig:
    """The pipeline's settings, data, teacher and space from a TOML file; other tables are not
    read (paths resolve relative to the file, as for ``dnax run``)."""
    return load_config(Path(path), registry, tables=TABLES)


def make_context(config: dnax.PipelineConfig, registry: Any, device: str | None = None,
                 stage: str = "profile") -> dnax.StageContext:
    """A context with the pipeline's data, teacher and space on ``device`` (default: the
    pipeline's), reporting through ``registry``'s hooks. Nothing is written."""
    from dnax.runner import resolve_device

    name = resolve_device(device or config.pipeline.device, dnax.DistInfo())
    sec = config.sections
    plugins = dnax.Plugins(**{k: registry.create_plugin(k, sec[k].plugin, sec[k].config)
                              for k in ("data", "teacher", "space")})
    root = config.source.parent if config.source is not None else Path.cwd()
    return dnax.StageContext(stage, config, plugins, dnax.RunDir(root), registry.hook, name)


# --- timing ----------------------------------------------------------------------------------

def device_name(device: str) -> str:
    """A readable name of ``device``: the GPU's name, or the CPU model."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    if d.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return d.type


def slug(name: str) -> str:
    """``name`` as a file-name part: ``"NVIDIA H100 80GB HBM3"`` → ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def time_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, *, repeats: int,
              warmup: int) -> tuple[float, Any]:
    """The median milliseconds of ``fn(x)`` over ``repeats`` timed calls after ``warmup``
    untimed ones (:func:`dnax.plugins.toolkit.timing.median_ms`, under inference mode), and
    its output."""
    with torch.inference_mode():
        t = time_once(lambda: fn(x), repeats=repeats, warmup=warmup, device=x.device)
    return float(t.ms), t.output


# --- profiling -------------------------------------------------------------------------------

class Profiler(TableCost):
    """Walks the space like the cost models do, timing each distinct layer op once (the timm
    block the network holds, built by :func:`dnax.plugins.toolkit.builder.build_layer`)."""

    def __init__(self, device: str, batch_size: int, repeats: int, warmup: int):
        super().__init__(None)
        self.device = torch.device(device)
        self.batch_size, self.repeats, self.warmup = batch_size, repeats, warmup
        self.ops: dict[str, float] = {}
        self.fixed: dict[str, float] = {}

    def _time(self, fn: Callable[[torch.Tensor], Any], shape: Sequence[int]
              ) -> tuple[float, Any]:
        x = torch.randn(self.batch_size, *shape, device=self.device)
        return time_call(fn, x, repeats=self.repeats, warmup=self.warmup)

    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        ms, y = self._time(layer.to(self.device), (sig.in_chs, sig.in_size, sig.in_size))
        self.ops[op_key(sig, self.batch_size)] = ms
        ctx.progress("ops", len(self.ops), None, last=f"{ms:.3g} ms")
        return ms, int(y.shape[-1])

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        keys = self.keys(ctx, model, n_fixed, blocks, self.batch_size)
        model = model.to(self.device)
        res = ctx.resolution

        ctx.progress("fixed parts", 0, 2)
        stem_ms, x = self._time(stem_part(model, n_fixed), (model.in_chans, res, res))
        x = searched_stages(model, n_fixed, blocks, x, res)
        ctx.progress("fixed parts", 1, 2)
        head_ms, _ = time_call(head_part(model), x.clone(), repeats=self.repeats,
                               warmup=self.warmup)
        ctx.progress("fixed parts", 2, 2)
        self.fixed.update({keys["stem"]: stem_ms, keys["head"]: head_ms})
        return stem_ms + head_ms


def profile(config: dnax.PipelineConfig, registry: Any, *, batch_size: int = 1,
            repeats: int = 50, warmup: int = 10, device: str | None = None) -> dict[str, Any]:
    """Time every distinct layer op of ``config``'s space and the fixed parts of its network at
    ``batch_size`` and the pipeline's resolution on ``device`` (default: the pipeline's).

    Returns the latency table (see :mod:`dnax.plugins.costs.latency`) holding this one device;
    write it with :func:`write_table`.
    """
    for name, value, least in (("batch_size", batch_size, 1), ("repeats", repeats, 1),
                               ("warmup", warmup, 0)):
        if value < least:
            raise dnax.ConfigError(f"{name}: must be >= {least}, got {value}")
    ctx = make_context(config, registry, device)
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    ctx.plugins.space.check_blocks(blocks)
    prof = Profiler(ctx.device, batch_size, repeats, warmup)
    t0 = time.perf_counter()
    for spec in blocks:
        prof.candidate_costs(ctx, spec, prof.candidates(ctx, spec))
    prof.fixed_cost(ctx, blocks)
    name = device_name(ctx.device)
    ctx.log(f"measured {len(prof.ops)} ops and {len(prof.fixed)} fixed parts on {name} in "
            f"{time.perf_counter() - t0:.1f} s")
    entry = {
        "device_type": torch.device(ctx.device).type,
        "batch_size": batch_size,
        "resolution": ctx.resolution,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": warmup,
        "dtype": "float32",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pipeline": config.pipeline.name,
        "seconds": round(time.perf_counter() - t0, 3),
        "ops": dict(sorted(prof.ops.items())),
        "fixed": prof.fixed,
    }
    return {"format": KIND, "format_version": VERSION, "device": name, "devices": {name: entry}}


def default_output(pipeline: str | Path, table: dict[str, Any]) -> Path:
    """``<pipeline dir>/latency-<device slug>.json``."""
    return Path(pipeline).resolve().parent / f"latency-{slug(table['device'])}.json"


def write_table(path: str | Path, table: dict[str, Any]) -> dict[str, Any]:
    """Write ``table`` to ``path`` atomically; the other devices' entries of a table already at
    ``path`` are kept (its entry for the same device is replaced). Returns what was written."""
    path = Path(path)
    if path.exists():
        old = read_table(path)  # refuses to overwrite a file that is not a latency table
        table = {**table, "devices": {**old["devices"], **table["devices"]}}
    atomic_write_text(path, json.dumps(table, indent=2) + "\n")
    return table


# --- checking --------------------------------------------------------------------------------

@frozen
class CheckResult:
    """Predicted against measured latency (ms per batch) of random whole networks."""

    device: str
    choices: tuple[tuple[int, ...], ...]
    predicted: tuple[float, ...]
    measured: tuple[float, ...]

    @property
    def pairs(self) -> list[tuple[float, float]]:
        return list(zip(self.predicted, self.measured, strict=True))

    @property
    def spearman(self) -> float:
        return spearman(self.predicted, self.measured)

    @property
    def kendall(self) -> float:
        return kendall(self.predicted, self.measured)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties: average ranks); NaN when either side is constant."""
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties corrected); NaN when either side is constant."""
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.kendalltau(x, y, variant="b").statistic)


def _sample(rng: np.random.Generator, cells: Sequence[dnax.CellSpec]) -> int:
    """A candidate index: a cell uniformly, then one op per layer uniformly (so shallow cells
    are drawn as often as deep ones, spreading the networks' latencies)."""
    c = int(rng.integers(len(cells)))
    start = sum(cell.num_candidates for cell in cells[:c])
    return start + int(rng.integers(cells[c].num_candidates))


def check(config: dnax.PipelineConfig, registry: Any, table: str | Path, k: int,
          seed: int | None = None, *, device: str | None = None, repeats: int | None = None,
          warmup: int | None = None) -> CheckResult:
    """Build ``k`` random networks of the space as the retrainer builds them, time each end to
    end on ``device`` (at the table's batch size, repeats and warm-up unless given) and predict
    each from ``table``'s entry for that device with the ``latency`` cost model."""
    from dnax.plugins.toolkit.builder import build_network

    if k < 1:
        raise dnax.ConfigError(f"--check: must be >= 1, got {k}")
    ctx = make_context(config, registry, device, stage="check")
    name = device_name(ctx.device)
    model = Latency(LatencyConfig(table=Path(table), device=name))
    entry = model.entry[1]
    repeats = repeats or int(entry.get("repeats", 50))
    warmup = int(entry.get("warmup", 10)) if warmup is None else warmup
    space, res = ctx.plugins.space, ctx.resolution
    blocks = ctx.plugins.teacher.blocks(res)
    space.check_blocks(blocks)
    fixed = model.fixed_cost(ctx, blocks)
    rng = np.random.default_rng(config.pipeline.seed if seed is None else seed)
    choices, predicted, measured = [], [], []
    for n in range(k):
        choice = tuple(_sample(rng, space.cells(b)) for b in blocks)
        chosen = [model.candidates(ctx, b)[i] for b, i in zip(blocks, choice, strict=True)]
        cost = fixed + sum(float(model.candidate_costs(ctx, b, [c])[0])
                           for b, c in zip(blocks, chosen, strict=True))
        net = build_network(space.arch_def(blocks, chosen), ctx.plugins.data.num_classes,
                            space.model_kwargs()).eval().to(ctx.device)
        x = torch.randn(model.batch_size, net.in_chans, res, res, device=ctx.device)
        ms, _ = time_call(net, x, repeats=repeats, warmup=warmup)
        choices.append(choice)
        predicted.append(cost)
        measured.append(ms)
        ctx.progress("networks", n + 1, k, predicted=cost, measured=ms)
    return CheckResult(name, tuple(choices), tuple(predicted), tuple(measured))
