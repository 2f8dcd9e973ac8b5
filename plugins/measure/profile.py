"""Measure latency tables (``dnax profile``) and check them against whole networks.

:func:`profile` builds random whole networks of a pipeline's space, as the retrainer builds
them, chosen so that every distinct layer op, the stem and every head run in at least
``occurrences`` of them; it times every network end to end and every layer inside it, in the
context it runs in (after its predecessor, on its output, with the allocator and caches as the
network leaves them). An op's figure is the median over the places it ran; a calibration
``measured ~ scale * sum(parts) + per_layer_ms * layers + offset_ms`` is fitted on the same
networks' end-to-end figures (least squares of the relative error, outliers dropped once).
:func:`check` then draws networks the fit did not see, times them end to end the same way and
compares with the table's prediction. Nothing here prints: progress goes through the
registry's ``dnax_progress`` hook.

Runtimes (``torch``, ``onnxruntime``): :mod:`dnax.plugins.costs.runtimes`, which the latency
cost model also uses to time whole networks; this module writes tables, the cost model reads
them.

Protocol (:class:`dnax.plugins.toolkit.timing.Protocol`): warm-up steps, then interleaved steps
(each one run of every network in turn) until every network's statistic is stable to the
tolerance, at most ``max_repeats`` steps; the table records it with the thread count.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import frozen
from scipy import stats
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax
from dnax.config import load_config
from dnax.plugins.costs.common import LayerSig, out_size, searched_stages, stem_part
from dnax.plugins.costs.latency import (
    KIND,
    VERSION,
    Latency,
    LatencyConfig,
    TableCost,
    entry_key,
    head_key,
    op_key,
    read_table,
)
from dnax.plugins.costs.runtimes import (
    RUNTIMES,
    Plan,
    Runtime,
    device_name,
    make_runtime,
    random_input,
)
from dnax.plugins.toolkit.timing import (
    Protocol,
    fastest,
    run_protocol,
    warm_allocator,
)
from dnax.rundir import atomic_write_text

#: the pipeline tables profiling needs (costs, trainer etc. are ignored: a [[costs]] table that
#: names a latency table not yet measured must not stop its measurement)
TABLES = ("pipeline", "data", "teacher", "space")
#: a fitted network whose relative error is this far out (and beyond 4 MADs) is dropped once
OUTLIER = 0.05
#: the least number of networks the three calibration coefficients are fitted on (fewer: the
#: scale alone)
FULL_FIT = 8


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


def slug(name: str) -> str:
    """``name`` as a file-name part: ``"NVIDIA H100 80GB HBM3"`` → ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def load_average() -> tuple[float, ...]:
    """The machine's load average over 1, 5 and 15 minutes (empty where unknown)."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return ()


def make_protocol(*, repeats: int, warmup: int, min_repeats: int = 10, tolerance: float = 0.02,
                  statistic: str = "fast-quarter", check_every: int = 5) -> Protocol:
    """A :class:`Protocol` (``repeats``: its cap of timed steps); a bad value is a one-line
    ConfigError naming its option."""
    options = {"max_repeats": "repeats", "warmup": "warmup", "min_repeats": "min-repeats",
               "tolerance": "tolerance", "statistic": "statistic", "check_every": "check-every"}
    try:
        return Protocol(warmup=warmup, min_repeats=max(min(min_repeats, repeats), 2),
                        max_repeats=repeats, tolerance=tolerance, statistic=statistic,
                        check_every=check_every)
    except (ValueError, TypeError) as e:
        attr, _, rest = str(e).partition(": ")
        raise dnax.ConfigError(f"--{options[attr]}: {rest}" if attr in options
                               else f"protocol: {e}") from None


# --- the space's networks ------------------------------------------------------------------------

class Walker(TableCost):
    """Walks the space as the cost models do and names the table key of every part."""

    def __init__(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                 batch_size: int):
        super().__init__(None)
        self.ctx, self.blocks, self.batch_size = ctx, tuple(blocks), batch_size
        self.kwargs = ctx.plugins.space.model_kwargs()
        self._sigs: dict[LayerSig, tuple[str, int, int]] = {}
        self._cands: dict[tuple[int, int], list[tuple[tuple[str, ...], int]]] = {}
        self.reference, self.n_fixed = self.reference_network(ctx, self.blocks)
        self.stem = self.keys(ctx, self.reference, self.n_fixed, self.blocks,
                              batch_size)["stem"]

    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        return 0.0, out_size(sig)

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        return 0.0

    def head(self, width: int) -> str:
        return head_key(self.ctx, self.reference, width, self.blocks, self.batch_size)

    def _sig(self, sig: LayerSig) -> tuple[str, int, int]:
        if sig not in self._sigs:
            _, chs, size = self._layer(self.ctx, sig, self.kwargs)
            self._sigs[sig] = (op_key(sig, self.batch_size), chs, size)
        return self._sigs[sig]

    def candidate_keys(self, b: int, in_chs: int) -> list[tuple[tuple[str, ...], int]]:
        """Per candidate of block ``b`` after a cell ``in_chs`` wide: its layers' keys and the
        width it passes on."""
        if (b, in_chs) not in self._cands:
            spec = self.blocks[b]
            rows = []
            for cand in self.candidates(self.ctx, spec):
                chs, size, keys = in_chs, spec.in_size, []
                for j, arch in enumerate(cand.arch):
                    key, chs, size = self._sig(LayerSig(arch, chs, size, j == 0))
                    keys.append(key)
                rows.append((tuple(keys), chs))
            self._cands[(b, in_chs)] = rows
        return self._cands[(b, in_chs)]

    def all_keys(self) -> set[str]:
        """Every key a network of the space can need."""
        keys, widths = {self.stem}, set(self.in_widths(self.ctx, self.blocks, 0))
        for b in range(len(self.blocks)):
            out: set[int] = set()
            for w in widths:
                for layer_keys, chs in self.candidate_keys(b, w):
                    keys.update(layer_keys)
                    out.add(chs)
            widths = out
        return keys | {self.head(w) for w in widths}

    def plan(self, choice: Sequence[int]) -> Plan:
        space = self.ctx.plugins.space
        chosen = [self.candidates(self.ctx, b)[i] for b, i in zip(self.blocks, choice,
                                                                    strict=True)]
        arch = space.arch_def(self.blocks, chosen)
        width, keys = self.in_widths(self.ctx, self.blocks, 0)[0], [self.stem]
        for b, i in enumerate(choice):
            layer_keys, width = self.candidate_keys(b, width)[i]
            keys += layer_keys
        keys.append(self.head(width))
        return Plan(tuple(int(i) for i in choice), tuple(tuple(s) for s in arch),
                    len(arch) - len(self.blocks), tuple(len(c.arch) for c in chosen),
                    tuple(keys))

    def build(self, plan: Plan) -> nn.Module:
        from dnax.plugins.toolkit.builder import build_network

        return build_network(plan.arch_def, self.ctx.plugins.data.num_classes,
                             self.kwargs).eval()


def _sample(rng: np.random.Generator, cells: Sequence[dnax.CellSpec]) -> int:
    """A candidate index: a cell uniformly, then one op per layer uniformly (so shallow cells
    are drawn as often as deep ones, spreading the networks' latencies)."""
    c = int(rng.integers(len(cells)))
    start = sum(cell.num_candidates for cell in cells[:c])
    return start + int(rng.integers(cells[c].num_candidates))


def random_choice(rng: np.random.Generator, ctx: dnax.StageContext,
                  blocks: Sequence[dnax.BlockSpec]) -> tuple[int, ...]:
    return tuple(_sample(rng, ctx.plugins.space.cells(b)) for b in blocks)


def cover(walker: Walker, networks: int, occurrences: int, rng: np.random.Generator
          ) -> list[Plan]:
    """At least ``networks`` distinct networks (at most half the space's), among which every key
    of the space occurs at least ``occurrences`` times: greedy ones first (per block, a
    candidate whose keys are the most short of ``occurrences``, ties drawn at random), then
    random ones (:func:`_sample`)."""
    ctx, blocks = walker.ctx, walker.blocks
    total = math.prod(len(walker.candidates(ctx, b)) for b in blocks)
    networks = min(networks, max(1, total // 2))  # a small space keeps half for the check
    wanted = walker.all_keys()
    counts: dict[str, int] = dict.fromkeys(wanted, 0)
    plans: list[Plan] = []
    seen: set[tuple[int, ...]] = set()
    cap = max(networks, 1) + 20 * len(wanted) * max(occurrences, 1)
    attempts = 0
    while len(plans) < networks or any(c < occurrences for c in counts.values()):
        attempts += 1
        if attempts > 4 * cap:
            short = sorted(k for k, c in counts.items() if c < occurrences)
            raise dnax.ConfigError(f"$.space: no network of the space runs {short[0]} (and "
                                   f"{len(short) - 1} more keys) {occurrences} times")
        short = any(c < occurrences for c in counts.values())
        if short:
            choice, width = [], walker.in_widths(ctx, blocks, 0)[0]
            for b, spec in enumerate(blocks):
                rows = walker.candidate_keys(b, width)
                last = b == len(blocks) - 1
                score = np.array([sum(max(occurrences - counts[k], 0) for k in set(keys))
                                  + (max(occurrences - counts[walker.head(chs)], 0)
                                     if last else 0) for keys, chs in rows])
                if score.max() > 0:
                    i = int(rng.choice(np.flatnonzero(score == score.max())))
                else:
                    i = _sample(rng, ctx.plugins.space.cells(spec))
                choice.append(i)
                width = rows[i][1]
            choice_t = tuple(choice)
        else:
            choice_t = random_choice(rng, ctx, blocks)
        if choice_t in seen and not (short and attempts > cap):
            if not short and attempts > cap:
                break  # a small space: fewer distinct networks than asked for
            continue
        seen.add(choice_t)
        plan = walker.plan(choice_t)
        for k in plan.keys:
            counts[k] = counts.get(k, 0) + 1
        plans.append(plan)
    return plans


def network_cost(model: Latency, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                 choice: Sequence[int]) -> float:
    """The cost model's prediction of one whole network: the fixed part plus, per block, the
    candidate's cost in the row its predecessor's width picks."""
    total = float(model.fixed_cost(ctx, blocks))
    width = None
    for spec, i in zip(blocks, choice, strict=True):
        cand = model.candidates(ctx, spec)[i]
        costs = np.asarray(model.candidate_costs(ctx, spec, [cand]), dtype=np.float64)
        if costs.ndim == 2:
            costs = costs[list(model.in_widths(ctx, blocks, spec.index)).index(width)]
        total += float(costs[0])
        width = ctx.plugins.space.cells(spec)[cand.cell].out_chs
    return total


# --- measuring -----------------------------------------------------------------------------------

def _measure(ctx: dnax.StageContext, prepared: Sequence[Any], protocol: Protocol,
             parts: bool, label: str, parts_with_whole: bool = True) -> dict[int, Any]:
    """Every prepared network timed end to end under ``protocol``, interleaved; with ``parts``
    also part by part: in the same steps (``parts_with_whole``) or, after them, in as many
    steps of their own. In every step each network first runs once untimed, so that it is
    timed with its weights in the caches as when it runs in a loop (the other networks' turns
    have evicted them: timed cold, the digits example's networks run about 20 % slower)."""
    total = protocol.warmup + protocol.max_repeats

    def step(t: int) -> dict[int, float]:
        out = {}
        for i, p in enumerate(prepared):
            p.run()
            out[i] = p.run()
            if parts and parts_with_whole:
                p.run_parts(record=t >= protocol.warmup)
        ctx.progress(label, t + 1, total)
        return out

    whole = run_protocol(step, protocol)
    if parts and not parts_with_whole:
        steps = protocol.warmup + max(m.repeats for m in whole.values())
        for t in range(steps):
            for p in prepared:
                p.run_parts(record=False)
                p.run_parts(record=t >= protocol.warmup)
            ctx.progress(f"{label} (parts)", t + 1, steps)
    return whole


def fit_calibration(raw: Sequence[float], layers: Sequence[int], measured: Sequence[float]
                    ) -> dict[str, Any]:
    """``measured ~ scale * raw + per_layer_ms * layers + offset_ms``: least squares of the
    relative error (scale, per_layer_ms >= 0, offset_ms >= -half the fastest network, so no
    prediction can fall to nothing), refitted once without the networks whose error is beyond
    4 median absolute deviations and 5 %. Fewer than :data:`FULL_FIT` networks: scale only."""
    from scipy.optimize import lsq_linear

    x = np.asarray(raw, dtype=np.float64)
    n_layers = np.asarray(layers, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)

    def solve(keep: np.ndarray) -> np.ndarray:
        if keep.sum() < FULL_FIT:
            return np.array([float(np.median(y[keep] / x[keep])), 0.0, 0.0])
        a = np.column_stack([x, n_layers, np.ones_like(x)])[keep] / y[keep, None]
        res = lsq_linear(a, np.ones(int(keep.sum())),
                         bounds=([0.0, 0.0, -0.5 * float(y.min())], [np.inf, np.inf, np.inf]))
        return np.asarray(res.x)

    keep = np.ones(len(y), dtype=bool)
    coef = solve(keep)
    err = (coef[0] * x + coef[1] * n_layers + coef[2]) / y - 1
    mad = 1.4826 * float(np.median(np.abs(err - np.median(err))))
    out = np.abs(err) > max(4 * mad, OUTLIER)
    if out.any() and (~out).sum() >= min(FULL_FIT, len(y) - 1):
        keep = ~out
        coef = solve(keep)
        err = (coef[0] * x + coef[1] * n_layers + coef[2]) / y - 1
    fit = np.abs(err[keep]) * 100
    return {"scale": float(coef[0]), "per_layer_ms": float(coef[1]),
            "offset_ms": float(coef[2]), "networks": int(keep.sum()),
            "dropped": [int(i) for i in np.flatnonzero(~keep)],
            "fit_median_abs_error_pct": float(np.median(fit)),
            "fit_worst_abs_error_pct": float(np.max(fit))}


def profile(config: dnax.PipelineConfig, registry: Any, *, batch_size: int = 1,
            repeats: int = 50, warmup: int = 5, min_repeats: int = 10, tolerance: float = 0.02,
            statistic_name: str = "fast-quarter", networks: int = 30, occurrences: int = 2,
            device: str | None = None, runtime: str | Runtime = "torch",
            seed: int | None = None) -> dict[str, Any]:
    """Measure ``config``'s space at ``batch_size`` and the pipeline's resolution on ``device``
    (default: the pipeline's) with ``runtime``: at least ``networks`` whole networks, every key
    in at least ``occurrences`` of them, each timed end to end and part by part (see the
    module's docstring); ``repeats`` is the protocol's cap of timed steps.

    Returns the latency table (see :mod:`dnax.plugins.costs.latency`) holding this one entry;
    write it with :func:`write_table`.
    """
    for name, value, least in (("batch-size", batch_size, 1), ("networks", networks, 1),
                               ("occurrences", occurrences, 1)):
        if value < least:
            raise dnax.ConfigError(f"--{name}: must be >= {least}, got {value}")
    if isinstance(runtime, str) and runtime not in RUNTIMES:
        raise dnax.ConfigError(f"--runtime: one of {', '.join(RUNTIMES)}, got {runtime!r}")
    protocol = make_protocol(repeats=repeats, warmup=warmup, min_repeats=min_repeats,
                             tolerance=tolerance, statistic=statistic_name)
    ctx = make_context(config, registry, device)
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    ctx.plugins.space.check_blocks(blocks)
    allocator = warm_allocator()
    t0 = time.perf_counter()
    walker = Walker(ctx, blocks, batch_size)
    res = ctx.resolution
    _check_sizes(ctx, walker, blocks)
    rng = np.random.default_rng([config.pipeline.seed if seed is None else seed, 1])
    plans = cover(walker, networks, occurrences, rng)
    rt = make_runtime(runtime, ctx.device)
    try:
        prepared = []
        for n, plan in enumerate(plans):
            net = walker.build(plan)
            prepared.append(rt.prepare(net, random_input(batch_size, net.in_chans, res), plan))
            ctx.progress("networks built", n + 1, len(plans))
        whole = _measure(ctx, prepared, protocol, parts=True, label="profiling steps",
                         parts_with_whole=rt.parts_with_whole)
        places: dict[str, list[float]] = defaultdict(list)
        for plan, p in zip(plans, prepared, strict=True):
            runs = np.asarray(p.part_times(), dtype=np.float64)
            if runs.ndim != 2 or runs.shape[1] != len(plan.keys):
                raise dnax.PluginError(f"--runtime {rt.name}: timed {runs.shape} parts of a "
                                       f"network with {len(plan.keys)} parts")
            # each part's figure from the runs the statistic keeps, chosen by their totals,
            # so a network's parts add up to one of its own runs
            keep = fastest(list(runs.sum(axis=1)), protocol.statistic)
            for key, col in zip(plan.keys, runs.T, strict=True):
                places[key].append(float(np.median(col[keep])))
    finally:
        rt.close()
    table = {k: float(np.median(v)) for k, v in places.items()}
    raw = [sum(table[k] for k in plan.keys) for plan in plans]
    measured = [whole[i].ms for i in range(len(plans))]
    cal = fit_calibration(raw, [p.num_layers for p in plans], measured)
    cal["choices"] = [list(p.choice) for p in plans]
    cal["measured_ms"] = measured
    name = device_name(ctx.device)
    seconds = time.perf_counter() - t0
    ctx.log(f"measured {len(plans)} networks ({len(table)} parts) on {name} with {rt.name} in "
            f"{seconds:.1f} s; calibration fits them within "
            f"{cal['fit_median_abs_error_pct']:.1f} % (median)")
    fixed_keys = {walker.stem} | {k for k in table if k.startswith("head:")}
    entry = {
        "device": name,
        "runtime": rt.name,
        "device_type": torch.device(ctx.device).type,
        "batch_size": batch_size,
        "resolution": res,
        "threads": rt.threads,
        "protocol": {**protocol.as_dict(), "interleaved": True, "rewarm": True,
                     "threads": rt.threads, "allocator": allocator},
        "repeats": protocol.max_repeats,
        "warmup": protocol.warmup,
        "dtype": "float32",
        **rt.versions(),
        "pipeline": config.pipeline.name,
        "seconds": round(seconds, 3),
        "load_average": list(load_average()),
        "networks": {
            "measured": len(plans),
            "min_occurrences": int(min(len(places[k]) for k in table)),
            "stable_share": float(np.mean([m.stable for m in whole.values()])),
            "worst_spread_pct": float(100 * max(m.spread for m in whole.values())),
            "median_repeats": float(np.median([m.repeats for m in whole.values()])),
        },
        "ops": dict(sorted((k, v) for k, v in table.items() if k not in fixed_keys)),
        "fixed": dict(sorted((k, v) for k, v in table.items() if k in fixed_keys)),
        "calibration": cal,
    }
    key = entry_key(name, rt.name)
    return {"format": KIND, "format_version": VERSION, "device": key, "devices": {key: entry}}


def _check_sizes(ctx: dnax.StageContext, walker: Walker, blocks: Sequence[dnax.BlockSpec]
                 ) -> None:
    """Every block of the network the space builds must see the teacher's block's size."""
    model, n_fixed = walker.reference, walker.n_fixed
    with torch.inference_mode():
        x = stem_part(model, n_fixed)(random_input(1, model.in_chans, ctx.resolution))
    searched_stages(model, n_fixed, blocks, x, ctx.resolution)


def default_output(pipeline: str | Path, table: dict[str, Any]) -> Path:
    """``<pipeline dir>/latency-<device slug>.json``."""
    device = table["devices"][table["device"]].get("device", table["device"])
    return Path(pipeline).resolve().parent / f"latency-{slug(device)}.json"


def write_table(path: str | Path, table: dict[str, Any]) -> dict[str, Any]:
    """Write ``table`` to ``path`` atomically; the other entries of a table already at ``path``
    are kept (its entry for the same device and runtime is replaced). Returns what was
    written."""
    path = Path(path)
    if path.exists():
        try:
            old = read_table(path)  # refuses to overwrite a file that is not a latency table
        except dnax.ArtifactError as e:
            if "version" not in str(e):
                raise
            old = {"devices": {}}  # an older version's table: replaced
        table = {**table, "devices": {**old["devices"], **table["devices"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=2) + "\n")
    return table


# --- checking --------------------------------------------------------------------------------

@frozen
class CheckResult:
    """Predicted against measured latency (ms per batch) of random whole networks the table's
    calibration was not fitted on.

    ``drift``: how much slower (> 1) the machine ran than when the table was measured, the
    median ratio of a few of the fitted networks (anchors) timed again among the checked ones;
    the ``adjusted`` figures compare the prediction with ``measured / drift``, the error of the
    table alone with the machine's change of speed taken out.
    """

    device: str
    choices: tuple[tuple[int, ...], ...]
    predicted: tuple[float, ...]
    measured: tuple[float, ...]
    runtime: str = "torch"
    stable: tuple[bool, ...] = ()
    #: the machine's load average (1, 5, 15 min) when the check ended
    load: tuple[float, ...] = ()
    drift: float = 1.0
    anchors: int = 0

    @property
    def pairs(self) -> list[tuple[float, float]]:
        return list(zip(self.predicted, self.measured, strict=True))

    def errors_pct(self, adjusted: bool = False) -> tuple[float, ...]:
        """Per network, (predicted - measured) / measured in percent (measured / drift when
        ``adjusted``)."""
        d = self.drift if adjusted else 1.0
        return tuple(100 * (p - m / d) / (m / d) for p, m in self.pairs)

    @property
    def errors(self) -> tuple[float, ...]:
        return self.errors_pct()

    def within(self, pct: float = 10.0, adjusted: bool = False) -> float:
        """The share of networks whose prediction is within ``pct`` % of the measurement."""
        errors = self.errors_pct(adjusted)
        return float(np.mean([abs(e) <= pct for e in errors])) if errors else 0.0

    def median_abs_error(self, adjusted: bool = False) -> float:
        return float(np.median(np.abs(self.errors_pct(adjusted))))

    def worst_error(self, adjusted: bool = False) -> float:
        """The error of largest magnitude, signed (%)."""
        return max(self.errors_pct(adjusted), key=abs)

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


def check(config: dnax.PipelineConfig, registry: Any, table: str | Path, k: int,
          seed: int | None = None, *, device: str | None = None,
          runtime: str | Runtime | None = None, repeats: int | None = None,
          warmup: int | None = None, anchors: int = 5) -> CheckResult:
    """Build ``k`` random networks of the space that the table's calibration was not fitted on,
    time each end to end on ``device`` with the table's runtime (``runtime`` picks the entry),
    batch size and protocol (``repeats``, ``warmup``: override it) and predict each with the
    ``latency`` cost model. ``anchors`` of the fitted networks (spread over their latencies)
    are timed again among them, for :attr:`CheckResult.drift`."""
    if k < 1:
        raise dnax.ConfigError(f"--check: must be >= 1, got {k}")
    ctx = make_context(config, registry, device, stage="check")
    name = device_name(ctx.device)
    rt_name = runtime.name if isinstance(runtime, Runtime) else runtime
    model = Latency(LatencyConfig(table=Path(table), device=name if rt_name is None
                                  else entry_key(name, rt_name)))
    key, entry = model.entry
    protocol = Protocol.from_dict(entry.get("protocol", {}))
    if repeats is not None or warmup is not None:
        protocol = make_protocol(repeats=repeats or protocol.max_repeats,
                                 warmup=protocol.warmup if warmup is None else warmup,
                                 min_repeats=protocol.min_repeats,
                                 tolerance=protocol.tolerance, statistic=protocol.statistic,
                                 check_every=protocol.check_every)
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    ctx.plugins.space.check_blocks(blocks)
    warm_allocator()
    walker = Walker(ctx, blocks, model.batch_size)
    cal = entry["calibration"]
    fitted = [tuple(c) for c in cal.get("choices", [])]
    rng = np.random.default_rng(config.pipeline.seed if seed is None else seed)
    choices: list[tuple[int, ...]] = []
    for _ in range(100 * k):
        if len(choices) == k:
            break
        choice = random_choice(rng, ctx, blocks)
        if choice not in fitted and choice not in choices:
            choices.append(choice)
    if not choices:
        raise dnax.ConfigError(f"{table}: every network of the space was used to fit the "
                               "table's calibration; nothing is left to check it on")
    then = list(cal.get("measured_ms") or [])
    marks: list[int] = []
    if anchors > 0 and len(then) == len(fitted) and fitted:
        order = np.argsort(then)
        marks = sorted({int(order[round(q)]) for q in np.linspace(0, len(order) - 1,
                                                                  min(anchors, len(order)))})
    predicted = [network_cost(model, ctx, blocks, c) for c in choices]
    rt = make_runtime(runtime if runtime is not None else entry.get("runtime", "torch"),
                      ctx.device, int(entry.get("threads") or torch.get_num_threads()))
    try:
        prepared = []
        runs = [*choices, *(fitted[i] for i in marks)]
        for n, choice in enumerate(runs):
            plan = walker.plan(choice)
            net = walker.build(plan)
            prepared.append(rt.prepare(net, random_input(model.batch_size, net.in_chans,
                                                   ctx.resolution), plan))
            ctx.progress("networks built", n + 1, len(runs))
        whole = _measure(ctx, prepared, protocol, parts=False, label="check steps")
    finally:
        rt.close()
    measured = [whole[i].ms for i in range(len(choices))]
    drift = float(np.median([whole[len(choices) + j].ms / then[i]
                             for j, i in enumerate(marks)])) if marks else 1.0
    return CheckResult(key, tuple(choices), tuple(predicted), tuple(measured), rt.name,
                       tuple(whole[i].stable for i in range(len(choices))), load_average(),
                       drift, len(marks))
