"""The parts of ``dnax bench all`` (:mod:`dnax.cli.bench_all` parses its options and writes
``DIR/bench.json`` and ``DIR/bench.md``): one prepared run that proves dnax's CUDA paths and
measures them under a deadline.

Its parts, in this order, each in a process of its own, so that a part past its time can be
stopped and a crash in one (a CUDA error, say) leaves the others' figures:

``digits``
    the digits example pipeline end to end, every stage with AMP on (on CUDA: autocast in the
    teacher, the distill trainer, the tree walk and the retrainer), the ONNX export checked
    against onnxruntime, and the run's report;
``train``
    ``dnax bench train --preset paper --teacher-model tf_efficientnet_b7`` at 224 px, batch 64
    (untrained weights: timing only): step / floor, images per second, the official
    block-after-block schedule's ratio, and the peak GPU memory;
``rank``
    ``dnax bench rank`` at depth 4 x 6 ops, in float32 and under autocast, and how far the
    candidates' scores under autocast are from the float32 ones;
``profile``
    ``dnax profile --check`` of the digits pipeline: a latency table measured on the device,
    then random whole networks timed against its prediction;
``paper-rank``
    the real ranking cost of the paper's space: every block's supernet (random weights) scored
    by the tree walk on an ``efficientnet_b0`` teacher's block features (random weights) of
    16 x 64 held-out images and one recalibration batch at 224 px, as the evaluator's defaults.
    Under its deadline it walks a share of each cell (sub-trees under op prefixes, at least one
    per cell) and extrapolates each cell linearly by leaf count; the report says how much.

The deadline: a part starts only when its budget fits in the time left, and it may use the time
the parts after it will not need; a part not started is recorded as skipped with the reason, one
stopped at its time as timed out. Both files are rewritten after every part, so a run cut short
from outside still leaves what it measured. On the CPU the sizes are tiny (``--tiny``, the
default there): a smoke test that keeps the command working, not performance figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

GOAL_MEMORY_GIB = 80.0  # issue 18: a B7-teacher run fits one 80 GB GPU
TINY_DIGITS_IMAGES = 256  # per split, with 1 epoch per stage
SCORE_DIFF = "largest relative score difference"  # a row of dnax bench rank: tree vs plain
TREE_VS_PLAIN = " (tree walk vs plain loop)"
PAPER_RESOLUTION = 224
PAPER_CELL = "paper-rank cell: "  # a log line per cell walked
PAPER_SHARE_OF_TIME = 0.7  # of paper-rank's time: the rest is for starting up and writing


@frozen
class Part:
    """One part of the run: what it is, its time, the figures its table always names."""

    title: str
    budget: float  # seconds at full size (on the GPU)
    tiny_budget: float  # seconds at tiny size (on the CPU)
    figures: tuple[str, ...]
    run: Callable[[Mapping[str, Any], Path], dict[str, Any]]  # (settings, folder) -> result


# --- the parts (each runs in its own process) ----------------------------------------------

def _registry() -> Any:
    from dnax.registry import get_registry

    return get_registry()


def _digits(s: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The digits pipeline end to end on the device, AMP on in every stage."""
    import tomllib

    import dnax
    from dnax.config import load_config
    from dnax.plugins.measure.reports import fmt

    path = Path(s["pipeline"])
    raw = tomllib.loads(path.read_text())
    raw.setdefault("pipeline", {})["device"] = s["device"]
    amp = {"teacher": ("efficientnet", True), "trainer": ("distill", "bf16"),
           "evaluator": ("prefix", True), "retrainer": ("timm", True)}
    for kind, (plugin, on) in amp.items():
        if raw.get(kind, {}).get("plugin") == plugin:
            raw[kind].setdefault("amp", on)
    if s["tiny"]:
        for kind in ("teacher", "trainer", "retrainer"):
            if kind in raw:
                raw[kind]["epochs"] = 1
        if raw.get("data", {}).get("plugin") == "digits":
            raw["data"]["limit"] = TINY_DIGITS_IMAGES
    registry = _registry()
    config = load_config(raw, registry, base_dir=path.parent)
    run = dnax.run_pipeline(config, folder / "run", registry=registry)
    report = run.report or {}
    retrain = run.results.get("retrain")
    meta = json.loads(run.run_dir.path(retrain.meta).read_text()) if retrain else {}
    onnx = meta.get("onnx") or {}

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{v:.1f} %"

    stages = report.get("stages", {})
    teacher, student = report.get("teacher", {}), report.get("student", {})
    diff = onnx.get("onnxruntime_max_abs_diff")
    rows = [(f"{name} stage", f"{fmt(st['seconds'])} s", "") for name, st in stages.items()]
    rows += [
        ("teacher top-1 (val)", pct(teacher.get("top1")), ""),
        ("selected network: params", fmt(report.get("selection", {}).get("params", 0.0)), ""),
        ("student top-1 (val)", pct(student.get("top1")), ""),
        ("ONNX export: onnxruntime vs torch, largest |logit difference|",
         "not exported" if not onnx else ("n/a" if diff is None else f"{diff:.2g}"),
         "<= 0.001"),
    ]
    amps = {k: getattr(config.sections[k].config, "amp", None) for k in amp if
            k in config.sections}
    small = (f", tiny: 1 epoch per stage, {TINY_DIGITS_IMAGES} images a split" if s["tiny"]
             else "")
    caption = (f"{path.name} on {s['device']}{small}; amp per stage: "
               + ", ".join(f"{k} {v}" for k, v in amps.items())
               + f"; run directory {folder / 'run'}")
    figures = {f"{k}_s": v["seconds"] for k, v in stages.items()}
    figures.update(teacher_top1=teacher.get("top1"), student_top1=student.get("top1"),
                   onnx_max_abs_diff=diff)
    return {"rows": rows, "caption": caption, "figures": figures, "amp": amps,
            "report": report}


def _finished_stages(folder: Path) -> str | None:
    """A digits run stopped part-way: which stages it finished."""
    done = sorted(p.stem for p in (folder / "run" / "stages").glob("*.json")
                  if not p.stem.endswith(".started"))
    return f"stages finished: {', '.join(done) or 'none'}"


def _train(s: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``dnax bench train`` with the paper preset and a B7 teacher, and the peak GPU memory."""
    import torch

    from dnax.plugins.measure.reports import goal_cell, train_report

    dev, tiny = s["device"], s["tiny"]
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    report, rows, caption = train_report(
        None, "paper", teacher_model="tf_efficientnet_b7", resolution=32 if tiny else 224,
        batch_size=2 if tiny else 64, device=dev, steps=1 if tiny else 10,
        warmup=0 if tiny else 2, threads=s["threads"], seed=s["seed"])
    gib = {k: getattr(torch.cuda, f"max_memory_{k}")(dev) / 2**30 if cuda else None
           for k in ("allocated", "reserved")}
    met = None if gib["allocated"] is None else gib["allocated"] < GOAL_MEMORY_GIB
    rows = [*rows,
            ("peak GPU memory (max_memory_allocated)",
             "n/a on CPU" if gib["allocated"] is None else f"{gib['allocated']:.2f} GiB",
             goal_cell(f"< {GOAL_MEMORY_GIB:g} GiB", met) if cuda else ""),
            ("peak GPU memory reserved (max_memory_reserved)",
             "n/a on CPU" if gib["reserved"] is None else f"{gib['reserved']:.2f} GiB", "")]
    figures = {**report["figures"], **{k: r["value"] for k, r in report["ratios"].items()},
               "peak_allocated_gib": gib["allocated"], "peak_reserved_gib": gib["reserved"]}
    return {"rows": rows, "caption": caption, "figures": figures, "report": report}


def _autocast_scores(depth: int, ops: int, batch_size: int, size: int, device: str,
                     seed: int) -> dict[str, float]:
    """Every candidate's scores under autocast against float32, on the same cell and images
    (the ``dnax bench rank`` cell, one batch, BatchNorm recalibrated on it)."""
    import torch

    from dnax.plugins.evaluators.tree import METRICS, make_groups, score_weights, walk_cell
    from dnax.plugins.measure.bench_rank import bench_supernet
    from dnax.plugins.measure.profile import spearman

    torch.manual_seed(seed)
    cell = bench_supernet(depth, ops, teacher_in=32, teacher_out=48).to(device).eval().cells[0]
    x = torch.randn(batch_size, 32, size, size, device=device)
    t = torch.randn(batch_size, 48, (size + 1) // 2, (size + 1) // 2, device=device)  # stride 2
    groups, weights = make_groups([x], [t]), score_weights([t])
    fp32, amp = (walk_cell(cell, groups, weights, amp=a).double().cpu() for a in (False, True))
    rel = ((amp - fp32).abs() / fp32.abs().clamp_min(1e-12)).max().item()
    rho = min(spearman(fp32[:, m].tolist(), amp[:, m].tolist()) for m in range(len(METRICS)))
    return {"max_rel_diff": rel, "spearman": rho}


def _rank(s: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``dnax bench rank`` in float32 and under autocast, and the scores' largest difference."""
    from dnax.plugins.measure.reports import rank_report

    dev, tiny = s["device"], s["tiny"]
    # on the GPU, batches of 64 at 32 px: the default 8 at 16 px time little but launches
    shape = ({"depth": 2, "ops": 3, "batch_size": 8, "size": 16} if tiny
             else {"depth": 4, "ops": 6, "batch_size": 64, "size": 32})
    rows, figures, reports = [], {}, {}
    for amp, name in ((False, "float32"), (True, "autocast")):
        report, part_rows, caption = rank_report(**shape, device=dev, amp=amp,
                                                 threads=s["threads"], seed=s["seed"])
        rows += [(f"{name}: {m}{TREE_VS_PLAIN if m == SCORE_DIFF else ''}", v, g)
                 for m, v, g in part_rows]
        figures.update({f"{name}_{k}": v for k, v in report["figures"].items()})
        figures[f"{name}_speedup"] = report["ratios"]["speedup"]["value"]
        reports[name] = report
    diff = _autocast_scores(**shape, device=dev, seed=s["seed"])
    rows += [(f"autocast vs float32: {SCORE_DIFF}",
              f"{diff['max_rel_diff']:.2g}", ""),
             ("autocast vs float32: rank correlation of the scores (Spearman, lowest metric)",
              f"{diff['spearman']:.4f}", "")]
    figures.update(autocast_max_rel_diff=diff["max_rel_diff"],
                   autocast_spearman=diff["spearman"])
    note = "" if dev.startswith("cuda") else ". Autocast is CUDA-only: on the CPU both are float32"
    return {"rows": rows, "caption": caption + note, "figures": figures, "report": reports}


def extrapolate(cells: Sequence[tuple[float, int, int]]) -> float:
    """Seconds of whole cells from (measured seconds, measured leaves, all leaves) each: each
    cell's time scaled linearly by its leaf count, summed."""
    return sum(secs * total / leaves for secs, leaves, total in cells)


def _units(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """A cell's sub-trees, smallest first-walked unit of the paper-rank part: the op prefixes
    of all layers but the last (the whole cell when it has one layer)."""
    return [tuple(p) for p in itertools.product(*map(range, shape[:-1]))]


def _paper_rank(s: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The paper space ranked on a B0 teacher: a share of every cell, extrapolated."""
    import torch

    from dnax.plugins.evaluators.tree import cell_shape, make_groups, score_weights, walk_cell
    from dnax.plugins.measure.bench_train import teacher_network
    from dnax.plugins.measure.reports import fmt, teacher_and_space
    from dnax.plugins.toolkit.timing import synchronize

    t_start = time.perf_counter()
    dev, tiny = s["device"], s["tiny"]
    res, batches, bs = (32, 2, 4) if tiny else (PAPER_RESOLUTION, 16, 64)
    amp = dev.startswith("cuda")  # the evaluator's default: autocast on CUDA
    stop_at = t_start + PAPER_SHARE_OF_TIME * s.get("timeout_s", PARTS["paper-rank"].budget)
    label, teacher, space, _ = teacher_and_space(None, "paper")
    model, _ = teacher_network(teacher, None)
    model = model.to(dev).eval()
    blocks = teacher.blocks(res)
    space.check_blocks(blocks)
    g = torch.Generator().manual_seed(s["seed"])
    n = len(blocks)
    feats: list[list[list[torch.Tensor]]] = [[[] for _ in range(n)] for _ in range(3)]
    t0 = time.perf_counter()
    for b in range(batches + 1):  # the scoring batches, then the recalibration batch
        x = torch.randn(bs, *teacher.data_config(res).input_size, generator=g).to(dev)
        f = teacher.block_features(model, x)
        for i, spec in enumerate(blocks):
            if b < batches:
                feats[0][i].append(f[spec.index])
                feats[1][i].append(f[spec.index + 1])
            else:
                feats[2][i].append(f[spec.index])
    synchronize(dev)
    teacher_s = time.perf_counter() - t0
    # the first unit of every cell; more while the time left fits the later cells' first units
    later = [len(space.cells(spec)) for spec in blocks]
    cells: list[dict[str, Any]] = []
    for i, spec in enumerate(blocks):
        net = space.build_supernet(spec).to(dev).eval()
        groups = make_groups(feats[0][i], feats[1][i], recal="train", recal_inputs=feats[2][i])
        weights = score_weights(feats[1][i])
        for c, cell in enumerate(net.cells):
            shape = cell_shape(cell)
            units, secs = _units(shape), 0.0
            done = 0
            while done < len(units):
                t1 = time.perf_counter()
                walk_cell(cell, groups, weights, prefixes=[units[done]], amp=amp)
                synchronize(dev)
                last = time.perf_counter() - t1
                secs, done = secs + last, done + 1
                to_come = sum(later[i + 1:]) + len(net.cells) - c - 1
                if tiny or time.perf_counter() + last * (1 + to_come) > stop_at:
                    break
            cells.append({"block": spec.index, "cell": c, "shape": shape, "seconds": secs,
                          "leaves": done * shape[-1], "candidates": math.prod(shape)})
            print(f"{PAPER_CELL}{json.dumps(cells[-1])}", flush=True)  # for a stopped run
        del net, groups, weights
        feats[0][i] = feats[1][i] = feats[2][i] = []
    total = sum(x["candidates"] for x in cells)
    measured = sum(x["leaves"] for x in cells)
    walk_s = sum(x["seconds"] for x in cells)
    est = extrapolate([(x["seconds"], x["leaves"], x["candidates"]) for x in cells])
    share = measured / total
    rows = [
        ("candidates in the space", f"{total:,}", ""),
        ("candidates walked (measured)", f"{measured:,} ({share:.2%})", ""),
        ("teacher forwards, all batches (measured)", f"{fmt(teacher_s)} s", ""),
        ("tree walk of the walked share (measured)", f"{fmt(walk_s)} s", ""),
        ("ranking, all candidates (extrapolated)", f"{fmt(est + teacher_s)} s", ""),
    ]
    small = " (tiny: not the paper's sizes)" if tiny else ""
    caption = (f"{label}, random weights (timing only){small}: {len(blocks)} blocks, "
               f"{len(cells)} cells; {batches} x {bs} held-out images and 1 recalibration "
               f"batch at {res} px on {dev}, {'autocast' if amp else 'float32'}. Measured "
               f"{measured:,} of {total:,} candidates (sub-trees under op prefixes of all "
               "layers but the last, at least one per cell), extrapolated per cell linearly "
               "by leaf count (an upper estimate: the shared prefixes above a sub-tree are "
               "counted for each)")
    figures = {"candidates": total, "measured_candidates": measured, "share": share,
               "teacher_s": teacher_s, "walk_measured_s": walk_s, "walk_extrapolated_s": est,
               "ranking_extrapolated_s": est + teacher_s}
    return {"rows": rows, "caption": caption, "figures": figures, "report": {"cells": cells}}


def _profile(s: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``dnax profile --check``: a latency table of the digits space on the device, checked
    against whole networks (through the library functions of ``dnax profile``)."""
    import numpy as np

    from dnax.plugins.measure import profile as prof
    from dnax.plugins.measure.reports import fmt

    registry = _registry()
    tiny, k = s["tiny"], 3 if s["tiny"] else 10
    config = prof.load_for_profile(s["pipeline"], registry)
    t0 = time.perf_counter()
    table = prof.profile(config, registry, batch_size=1, repeats=3 if tiny else 50,
                         warmup=1 if tiny else 10, device=s["device"])
    seconds = time.perf_counter() - t0
    path = folder / f"latency-{prof.slug(table['device'])}.json"
    prof.write_table(path, table)
    entry = table.get("devices", {}).get(table["device"], {})
    t0 = time.perf_counter()
    result = prof.check(config, registry, path, k, device=s["device"])
    check_s = time.perf_counter() - t0
    err = [abs(p - m) / m for p, m in zip(result.predicted, result.measured, strict=True)
           if m > 0]
    median_err = float(np.median(err)) * 100 if err else None
    rows = [
        ("ops measured", str(len(entry.get("ops", {}))), ""),
        ("profile time", f"{fmt(seconds)} s", ""),
        (f"check: {k} random networks, time", f"{fmt(check_s)} s", ""),
        ("check: Spearman (predicted vs measured)", f"{result.spearman:.3f}", ""),
        ("check: Kendall tau", f"{result.kendall:.3f}", ""),
        ("check: median |error| of the prediction",
         "n/a" if median_err is None else f"{median_err:.1f} %", ""),
    ]
    caption = (f"{Path(s['pipeline']).name} on {table['device']}: batch "
               f"{entry.get('batch_size', 1)}, resolution {entry.get('resolution', '?')} px, "
               f"{(entry.get('protocol') or {}).get('statistic', 'median')} of the runs "
               f"(protocol in the table); "
               f"table {path}")
    figures = {"ops": len(entry.get("ops", {})), "profile_s": seconds, "check_s": check_s,
               "spearman": result.spearman, "kendall": result.kendall,
               "median_abs_error_pct": median_err}
    networks = [{"candidates": list(c), "predicted_ms": p, "measured_ms": m}
                for c, p, m in zip(result.choices, result.predicted, result.measured,
                                   strict=True)]
    return {"rows": rows, "caption": caption, "figures": figures,
            "report": {"table": str(path), "entry": entry, "networks": networks}}


PARTS: dict[str, Part] = {
    "digits": Part("the digits pipeline end to end", 110, 90,
                   ("teacher stage", "train stage", "rank stage", "select stage",
                    "retrain stage", "teacher top-1 (val)", "student top-1 (val)",
                    "ONNX export: onnxruntime vs torch, largest |logit difference|"), _digits),
    "train": Part("dnax bench train --preset paper --teacher-model tf_efficientnet_b7", 70, 60,
                  ("step / floor", "step throughput", "official / step",
                   "peak GPU memory (max_memory_allocated)"), _train),
    "rank": Part("dnax bench rank, float32 and autocast", 30, 30,
                 ("float32: plain / tree", "autocast: plain / tree",
                  f"autocast vs float32: {SCORE_DIFF}"), _rank),
    "profile": Part("dnax profile --check", 40, 30,
                    ("ops measured", "check: Spearman (predicted vs measured)",
                     "check: median |error| of the prediction"), _profile),
    "paper-rank": Part("the paper space's ranking on a B0 teacher, a share extrapolated", 120,
                       30, ("candidates walked (measured)",
                            "ranking, all candidates (extrapolated)"), _paper_rank),
}


def _walked_cells(folder: Path) -> str | None:
    """A paper-rank run stopped part-way: the cells it walked (from its log)."""
    try:
        lines = (folder / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return None
    cells = [json.loads(x[len(PAPER_CELL):]) for x in lines if x.startswith(PAPER_CELL)]
    return (f"cells walked: {len(cells)}, {sum(c['leaves'] for c in cells)} candidates in "
            f"{sum(c['seconds'] for c in cells):.1f} s")


#: after a part stopped or failed: what it left (None: nothing to add)
PARTIAL: dict[str, Callable[[Path], str | None]] = {"digits": _finished_stages,
                                                    "paper-rank": _walked_cells}


def part_main(argv: Sequence[str]) -> int:
    """In a part's process: ``PART SETTINGS.json RESULT.json``; writes the result, or the
    error, to RESULT.json."""
    name, settings_path, result_path = argv
    settings = json.loads(Path(settings_path).read_text())
    t0 = time.perf_counter()
    try:
        if settings["threads"]:
            import torch

            torch.set_num_threads(settings["threads"])
        result = {"status": "ok", **PARTS[name].run(settings, Path(settings["folder"]))}
        code = 0
    except Exception as e:
        problems = getattr(e, "problems", None)
        reason = "; ".join(problems) if problems else f"{type(e).__name__}: {e}"
        result = {"status": "failed", "reason": reason, "traceback": traceback.format_exc()}
        traceback.print_exc()
        code = 1
    result["inner_seconds"] = time.perf_counter() - t0
    from dnax.cli.common import json_default

    Path(result_path).write_text(json.dumps(result, indent=2, default=json_default) + "\n")
    return code


# --- the parent: processes, deadline --------------------------------------------------------

def _spawn(name: str, settings: Path, result: Path, log: Path, timeout: float
           ) -> tuple[int | None, float]:
    """Run one part in a process group of its own; kill the group at ``timeout`` s.
    Returns (exit code, None when it was stopped; seconds)."""
    code = ("import sys; from dnax.plugins.measure.suite import part_main; "
            "sys.exit(part_main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-c", code, name, str(settings), str(result)],
                                stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        rc: int | None = None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # stopped at its time, interrupted or done: the group goes (data workers...)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, time.perf_counter() - t0


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _run_part(name: str, part: Part, folder: Path, settings: dict[str, Any], timeout: float
              ) -> dict[str, Any]:
    folder.mkdir(parents=True)
    settings_path, result_path = folder / "settings.json", folder / "result.json"
    log = folder / "log.txt"
    settings_path.write_text(json.dumps({**settings, "folder": str(folder),
                                         "timeout_s": timeout}, indent=2))
    rc, seconds = _spawn(name, settings_path, result_path, log, timeout)
    record: dict[str, Any] = {"seconds": round(seconds, 2), "log": str(log)}
    if rc is None:
        record.update(status="timed out", reason=f"stopped after {timeout:.0f} s, its time")
    elif result_path.exists():
        record.update(json.loads(result_path.read_text()))
    else:
        record.update(status="failed",
                      reason=f"exit code {rc}, no result; log: {_tail(log) or 'empty'}")
    if record["status"] != "ok" and name in PARTIAL:
        left = PARTIAL[name](folder)
        if left:
            record["reason"] += f" ({left})"
    return record


def run_parts(report: dict[str, Any], names: Sequence[str], budgets: Mapping[str, float],
              settings: dict[str, Any], work: Path, deadline: float, t0: float,
              on_update: Callable[[dict[str, Any]], None],
              say: Callable[[str], None] = lambda _: None) -> None:
    """Each part in its own process, in order, under ``deadline`` seconds from ``t0``
    (``time.perf_counter``): a part starts only when its budget fits the time left and may use
    the time the parts after it will not need. ``report["parts"]`` and ``elapsed_s`` are
    updated in place, and ``on_update(report)`` is called before and after every part."""
    for i, name in enumerate(names):
        left = deadline - (time.perf_counter() - t0)
        later = sum(budgets[n] for n in names[i + 1:])
        record = report["parts"][name]
        if left < budgets[name]:
            record.update(status="skipped", reason=f"not started: {max(left, 0):.0f} s of the "
                          f"{deadline:g} s deadline left, its budget is {budgets[name]:g} s")
        else:
            timeout = min(left, max(budgets[name], left - later))
            record["timeout_s"] = round(timeout, 1)
            report["parts"][name] = record | {"status": "running"}
            report["elapsed_s"] = time.perf_counter() - t0
            on_update(report)
            say(f"bench all: {name} ({PARTS[name].title}), up to {timeout:.0f} s")
            record.update(_run_part(name, PARTS[name], work / name, settings, timeout))
        say(f"bench all: {name}: {record['status']}"
            + (f" in {record['seconds']:.1f} s" if "seconds" in record else "")
            + (f" ({record['reason']})" if record.get("reason") else ""))
        report["parts"][name] = record
        report["elapsed_s"] = time.perf_counter() - t0
        on_update(report)
