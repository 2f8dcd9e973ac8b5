"""A reproduction of DNA's claims on Fashion-MNIST, with dnax, sized to have the power to test them.

Steps; each finished step is skipped, so rerunning the command resumes:

  sample      architectures stratified over the space (cell depths first, then ops), and random
              architectures under the teacher's parameter count -> archs.json
  search      a 28 px EfficientNet teacher, its block supernets, every candidate scored, the best
              student under the budget selected (and, without a pilot, retrained) (dnax
              pipeline) -> search.json, scores.csv
  pilot       (gpu, smoke) PROTOCOL.md's rule: the sample's first architectures x the seeds at
              each E of the ladder until the expected seed-vs-seed τ reaches 0.6; then n from
              the time left, or the run stops before the truth runs -> pilot.json
  matched     (gpu, smoke) random architectures within ±5 % of the student's params -> archs.json
  blocks      per block, candidates across cells trained alone against cached teacher features,
              scored like the supernet -> blocks.csv
  longer      the block supernets trained 3x as long (the same teacher), every candidate scored
              again -> scores-longer.csv
  spos        SPOS baseline: one whole-network supernet, uniform single paths, cross-entropy;
              every architecture's path after BatchNorm recalibration, scored on held-out images
              (val at the cpu scale, as it was run) -> spos.csv
  standalone  every architecture trained from scratch with one recipe and the scale's seeds;
              also the student and the random (cpu: and the teacher) -> standalone.csv
  table       RESULTS.md from the raw files only (rerunning it gives the same file)

    python docs/reproduction/reproduce.py                  # --scale cpu: every step, 2 workers
    python docs/reproduction/reproduce.py --scale smoke    # two minutes: checks the machinery
    python docs/reproduction/reproduce.py --scale gpu      # PROTOCOL.md, on one GPU
    python docs/reproduction/reproduce.py table            # the table again
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import io
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import dnax
from dnax.plugins.toolkit.training import network_flops, num_params
from dnax.rundir import atomic_write_text

HERE = Path(__file__).resolve().parent
STEPS = ("sample", "search", "pilot", "matched", "blocks", "longer", "spos", "standalone",
         "table")
#: the ``longer`` step trains the block supernets this many times as long as ``search`` does
LONGER = 3
#: Fashion-MNIST's own size: no resizing
RESOLUTION = 28
#: the fashion_mnist source's train split: 60,000 less its 10 % held out
TRAIN_IMAGES = 54_000

#: stem 3x3 stride 2 (28 -> 14 px), one fixed depthwise stage, then three searched blocks on
#: 14x14, 7x7 and 7x7 maps, where kernels 3, 5 and 7 see different amounts of the image
TEACHER_ARCH = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s1_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s1_e6_c80_se0.25",),
)
STEM_SIZE = 16
NUM_FEATURES = 320
#: per block three cells of 1, 2 and 3 layers, each layer one of 6 ops: 258 candidates a block
CELL_DEPTHS = (1, 2, 3)
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
#: one training recipe for every network trained from scratch here (teacher too)
LR, WEIGHT_DECAY, LABEL_SMOOTHING, WARMUP = 0.004, 0.05, 0.1, 1


@dataclass(frozen=True)
class Scale:
    """How much data, how many networks and epochs each step gets. The fields after ``minutes``
    are PROTOCOL.md's (the confirmatory gpu scale); their defaults are the exploratory study's."""

    limit: int | None  # images per split (train, heldout, val); None: all of them
    batch_size: int
    teacher_epochs: int  # the teacher the blocks are distilled from
    distill_epochs: int
    rank_batches: int  # held-out batches (of rank_batch) every candidate is scored on
    archs: int  # stratified sample (with a pilot: the most the run may train)
    seeds: int  # stand-alone runs per architecture
    standalone_epochs: int  # every network trained from scratch (with a pilot: its first E)
    random_archs: int  # random architectures under the teacher's parameter count
    spos_epochs: int
    recal_batches: int  # train batches that recalibrate BatchNorm per SPOS path
    block_candidates: int  # per block, trained alone against the teacher's features
    block_epochs: int
    block_images: int  # train images (teacher features cached) for the stand-alone blocks
    workers: int  # processes training stand-alone networks side by side
    minutes: float | None  # deadline: counts shrink rather than overrun
    sample_seed: int | None = None  # the sample's draw (None: --seed)
    truth_seeds: tuple[int, ...] = ()  # the stand-alone runs' seeds (empty: --seed onwards)
    ema_decay: float = 0.0  # EMA of the stand-alone runs' weights (evaluated when > 0)
    spos_split: str = "val"  # the images SPOS's paths are scored on
    longer: bool = True  # the ``longer`` step (supernets trained LONGER x as long)
    budget_fraction: float = 1.0  # the student's params budget, a fraction of the teacher's
    matched_archs: int = 0  # random architectures within MATCHED of the student's params
    pilot_archs: int = 0  # the pilot: the sample's first ones x the seeds (0: no pilot)
    epoch_ladder: tuple[int, ...] = ()  # the pilot's E, tried in turn
    min_archs: int = 0  # the pilot's smallest n
    pilot_binding: bool = True  # False: the rule is reported, never stops the run (smoke)
    n_boot: int = 2_000  # bootstrap resamples of the ranking figures
    rank_batch: int = 64  # images per held-out scoring batch


#: a matched random architecture's params lie within this fraction of the student's
MATCHED = 0.05
#: the pilot's goal: the expected seed-vs-seed Kendall τ (2/π) arcsin(r1) >= 0.6
CEILING_GOAL = 0.6

SCALES = {
    "smoke": Scale(limit=256, batch_size=32, teacher_epochs=1, distill_epochs=1, rank_batches=1,
                   archs=4, seeds=2, standalone_epochs=1, random_archs=2, spos_epochs=1,
                   recal_batches=2, block_candidates=3, block_epochs=1, block_images=128,
                   workers=2, minutes=None, ema_decay=0.9, spos_split="heldout",
                   budget_fraction=0.5, matched_archs=2, pilot_archs=3, epoch_ladder=(1, 2),
                   min_archs=3, pilot_binding=False, n_boot=1_000, rank_batch=32),
    "cpu": Scale(limit=6_000, batch_size=64, teacher_epochs=10, distill_epochs=3,
                 rank_batches=16, archs=32, seeds=2, standalone_epochs=3, random_archs=5,
                 spos_epochs=20, recal_batches=4, block_candidates=24, block_epochs=3,
                 block_images=3_000, workers=2, minutes=115.0),
    # PROTOCOL.md: fresh sample and seeds, 20 distillation epochs, the truth on all images with
    # EMA and 3 seeds, n >= 32 sized by the pilot, SPOS on held-out images, a binding budget
    "gpu": Scale(limit=None, batch_size=256, teacher_epochs=8, distill_epochs=20,
                 rank_batches=16, archs=96, seeds=3, standalone_epochs=10, random_archs=0,
                 spos_epochs=20, recal_batches=4, block_candidates=30, block_epochs=4,
                 block_images=20_000, workers=8, minutes=6.0, sample_seed=20261204,
                 truth_seeds=(101, 102, 103), ema_decay=0.999, spos_split="heldout",
                 longer=False, budget_fraction=0.5, matched_archs=5, pilot_archs=8,
                 epoch_ladder=(10, 15, 20, 30), min_archs=32, n_boot=10_000),
}
#: the default --seed per scale (PROTOCOL.md: the gpu scale's search seed is 7)
SEARCH_SEED = {"gpu": 7}


# --- files ------------------------------------------------------------------------------------

def say(step: str, message: str) -> None:
    print(f"[{step}] {message}", flush=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], header: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``: processes appending rows to one file take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_row(path: Path, row: Mapping[str, Any], header: Sequence[str]) -> None:
    """Add one row (atomic rewrite under the file's lock)."""
    with locked(path):
        write_csv(path, [*read_csv(path), row], header)


def machine() -> dict[str, Any]:
    import timm

    cpu = platform.processor() or platform.machine()
    with suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "dnax": dnax.__version__, "platform": platform.platform()}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Experiment:
    """The results folder of one scale: settings, raw files, each step's wall time, deadline."""

    RAW = ("settings.json", "steps.json", "archs.json", "search.json", "scores.csv",
           "blocks.csv", "scores-longer.csv", "spos.csv", "standalone.csv", "pilot.json")
    #: raw files a scale may leave out (``longer`` off, no pilot)
    OPTIONAL = ("scores-longer.csv", "pilot.json")

    def __init__(self, root: Path, scale: str, seed: int = 0, device: str = "auto",
                 threads: int = 0, deadline: float | None = None):
        self.root, self.scale_name, self.seed = Path(root), scale, seed
        self.scale, self.device, self.threads = SCALES[scale], device, threads
        self.deadline = deadline  # time.time() after which no new unit of work starts
        self.workers: int | None = None  # processes in the pool (None: the scale's)
        self.pipeline_toml = self.root / "pipeline.toml"
        self.run_dir = self.root / "run"
        self.files = {name: self.root / name for name in self.RAW}

    def check_settings(self, write: bool = True) -> None:
        """Refuse to mix the results of different settings in one folder; record them."""
        want = {"scale": self.scale_name, "seed": self.seed, "resolution": RESOLUTION,
                **asdict(self.scale)}
        for k in ("workers", "minutes"):  # how the work is run, not what it measures
            want.pop(k)
        want = json.loads(json.dumps(want))  # tuples as JSON lists
        path = self.files["settings.json"]
        if path.exists():
            # a folder made before a field existed was made with its default
            have = {**json.loads(json.dumps({f.name: f.default for f in fields(Scale)
                                             if f.default is not MISSING})), **read_json(path)}
            if have != want:
                diff = sorted(k for k in want if have.get(k) != want[k])
                raise SystemExit(f"{path}: made with other settings ({', '.join(diff)}); use "
                                 "another --results folder")
        elif write:
            write_json(path, want)

    @property
    def truth_seeds(self) -> list[int]:
        """The stand-alone runs' seeds."""
        return list(self.scale.truth_seeds) or list(range(self.seed, self.seed + self.scale.seeds))

    def steps(self) -> dict[str, Any]:
        path = self.files["steps.json"]
        return read_json(path) if path.exists() else {}

    def finished(self, step: str) -> bool:
        return bool(self.steps().get(step, {}).get("finished"))

    def time_left(self, need: float = 0.0) -> bool:
        """Whether a unit of work expected to take ``need`` seconds still fits the deadline."""
        return self.deadline is None or time.time() + need < self.deadline

    @contextmanager
    def timed(self, step: str) -> Iterator[dict[str, Any]]:
        """Add this session's wall time to the step's; mark it finished when the body returns
        without having been cut short (the body sets ``cut`` in the yielded dict)."""
        t0, ok, state = time.perf_counter(), False, {"cut": False}
        record = self.steps().get(step, {"seconds": 0.0, "sessions": 0})
        record.setdefault("started", now())
        try:
            yield state
            ok = not state["cut"]
        finally:
            steps = self.steps()
            record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
            record["sessions"] += 1
            record["machine"] = machine()
            if ok:
                record["finished"] = now()
                record.pop("cut", None)
            elif state["cut"]:
                record["cut"] = now()
            steps[step] = record
            write_json(self.files["steps.json"], steps)


def ensure_data() -> None:
    """Fashion-MNIST comes from the Debian package dataset-fashion-mnist: install it when it is
    missing and apt-get can (root), else stop with the command to run."""
    import shutil

    from dnax.plugins.data.fashion_mnist import DEBIAN_ROOT

    if (DEBIAN_ROOT / "train-images-idx3-ubyte.gz").exists():
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        say("data", "installing dataset-fashion-mnist with apt-get")
        subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=False)
    if not (DEBIAN_ROOT / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"{DEBIAN_ROOT}: Fashion-MNIST missing; run "
                         "`apt-get install -y dataset-fashion-mnist`")


# --- dnax plumbing ----------------------------------------------------------------------------

class Echo:
    """Prints the pipeline's log lines and stage ends (plugins never print; observers do)."""

    def __init__(self, step: str):
        self.step = step

    @dnax.hookimpl
    def dnax_log(self, stage: str, message: str) -> None:
        say(self.step, f"{stage}: {message}")

    @dnax.hookimpl
    def dnax_stage_end(self, stage: str, run_dir: Path, result: Any, skipped: bool,
                       seconds: float) -> None:
        say(self.step, f"stage {stage} {'reused' if skipped else 'done'} ({seconds:.1f} s)")


def registry(step: str) -> Any:
    from dnax.registry import Registry

    return Registry.create(entry_points=False, plugins=[Echo(step)])


def configured(exp: Experiment) -> tuple[dnax.PipelineConfig, dnax.Plugins]:
    """The pipeline config and its plugins (the pipeline file is written first if missing)."""
    import tomli_w

    from dnax.runner import instantiate

    if not exp.pipeline_toml.exists():
        atomic_write_text(exp.pipeline_toml, tomli_w.dumps(pipeline(exp)))
    reg = registry("load")
    config = dnax.load_pipeline(exp.pipeline_toml, reg)
    return config, instantiate(config, reg)


def context(stage: str, config: dnax.PipelineConfig, plugins: dnax.Plugins, folder: Path,
            seed: int | None = None) -> dnax.StageContext:
    """A stage context outside the runner: the pipeline's data and device; ``seed`` replaces
    the pipeline seed (initial weights, data order), never the data split's."""
    import attrs

    from dnax.context import QuietHooks
    from dnax.runner import resolve_device

    if seed is not None:
        config = attrs.evolve(config, pipeline=attrs.evolve(config.pipeline, seed=seed))
    device = resolve_device(config.pipeline.device, dnax.DistInfo())
    # progress and log lines are dropped: these steps print one line per network instead
    return dnax.StageContext(stage, config, plugins, dnax.RunDir(folder), QuietHooks(), device)


def teacher_params() -> int:
    from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher

    cfg = EfficientNetConfig(arch_def=TEACHER_ARCH, stem_size=STEM_SIZE,
                             num_features=NUM_FEATURES)
    return num_params(EfficientNetTeacher(cfg).build_model(10))


def retrain_recipe(exp: Experiment) -> dict[str, Any]:
    """The one from-scratch recipe (AdamW, cosine, warm-up, label smoothing; no EMA, dropout or
    drop-path): networks differ only in their architecture."""
    return {"plugin": "timm", "recipe": "quick", "epochs": exp.scale.standalone_epochs,
            "batch_size": exp.scale.batch_size, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "warmup_epochs": WARMUP, "label_smoothing": LABEL_SMOOTHING, "drop_rate": 0.0,
            "drop_path_rate": 0.0, "ema_decay": exp.scale.ema_decay}


def pipeline(exp: Experiment) -> dict[str, Any]:
    """The dnax pipeline of the search: teacher, space, distill, prefix, costs, exact, timm."""
    s = exp.scale
    data: dict[str, Any] = {"plugin": "fashion_mnist", "seed": exp.seed}
    if s.limit is not None:
        data["limit"] = s.limit
    teacher = {k: v for k, v in retrain_recipe(exp).items()
               if k in ("batch_size", "lr", "weight_decay", "label_smoothing")}
    return {
        "pipeline": {"name": f"fashion-mnist-{exp.scale_name}", "resolution": RESOLUTION,
                     "seed": exp.seed, "device": exp.device, "threads": exp.threads},
        "data": data,
        "teacher": {"plugin": "efficientnet", "arch_def": [list(a) for a in TEACHER_ARCH],
                    "stem_size": STEM_SIZE, "num_features": NUM_FEATURES,
                    "epochs": s.teacher_epochs, "opt": "adamw", "sched": "cosine",
                    "warmup_epochs": WARMUP, **teacher},
        "space": {"plugin": "mbconv", "preset": "custom", "kernels": list(KERNELS),
                  "expansions": list(EXPANSIONS), "stem_size": STEM_SIZE,
                  "stem_stage": list(TEACHER_ARCH[0]), "num_features": NUM_FEATURES,
                  "blocks": [{"cells": [{"depth": d} for d in CELL_DEPTHS]}
                             for _ in TEACHER_ARCH[1:]]},
        "trainer": {"plugin": "distill", "epochs": s.distill_epochs,
                    "batch_size": s.batch_size},
        "evaluator": {"plugin": "prefix", "batches": s.rank_batches,
                      "batch_size": s.rank_batch},
        "costs": [{"plugin": "params"}, {"plugin": "flops"}],
        "selector": {"plugin": "exact", "key": "nmae",
                     "budgets": {"params": int(s.budget_fraction * teacher_params())}},
        "retrainer": retrain_recipe(exp),
    }


def space_blocks(plugins: dnax.Plugins) -> tuple[dnax.BlockSpec, ...]:
    """The searched blocks, from the teacher's architecture alone (no training needed)."""
    return plugins.teacher.blocks(RESOLUTION)


# --- step: sample -----------------------------------------------------------------------------

def candidate_index(space: dnax.SearchSpace, spec: dnax.BlockSpec) -> dict[tuple, int]:
    """Each candidate's index in the block's ranking, by (cell, ops)."""
    return {(c.cell, tuple(c.ops)): i for i, c in enumerate(space.candidates(spec))}


def stratified_depths(n: int, blocks: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``n`` cell-depth combinations (one cell per block): every combination once in a shuffled
    round, then the next round, so any ``n`` covers the combinations as evenly as it can."""
    combos = list(itertools.product(range(len(CELL_DEPTHS)), repeat=blocks))
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        out += [combos[i] for i in rng.permutation(len(combos))]
    return out[:n]


def network(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec], index: Sequence[dict],
            picks: Sequence[tuple[int, tuple[int, ...]]]) -> dict[str, Any]:
    """One architecture (per block a cell and an op per layer): its candidates, arch def, and
    params and FLOPs counted on the network timm builds."""
    from dnax.plugins.retrainers.export import build_model

    chosen = [space.candidates(b)[idx[p]] for b, idx, p in zip(blocks, index, picks, strict=True)]
    arch_def = space.arch_def(blocks, chosen)
    model = build_model(arch_def, 10, space.model_kwargs())
    return {"candidates": [idx[p] for idx, p in zip(index, picks, strict=True)],
            "cells": [c.cell for c in chosen], "depths": [len(c.ops) for c in chosen],
            "ops": [list(c.ops) for c in chosen], "arch_def": arch_def,
            "params": num_params(model), "flops": network_flops(model, RESOLUTION)}


def step_sample(exp: Experiment, state: dict[str, Any]) -> None:
    _, plugins = configured(exp)
    space, blocks = plugins.space, space_blocks(plugins)
    index = [candidate_index(space, b) for b in blocks]
    n_ops = len(space.cells(blocks[0])[0].ops)
    seed = exp.seed if exp.scale.sample_seed is None else exp.scale.sample_seed
    rng = np.random.default_rng([seed, 16])
    budget = teacher_params()
    archs: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()

    def add(group: str, picks: list[tuple[int, tuple[int, ...]]]) -> bool:
        arch = network(space, blocks, index, picks)
        key = tuple(arch["candidates"])
        if key in seen or (group == "random" and arch["params"] > budget):
            return False
        seen.add(key)
        archs.append({"id": len(archs), "group": group, **arch})
        return True

    # stratified: cell depths first (balanced over the 27 combinations), then ops uniformly
    for depths in stratified_depths(exp.scale.archs, len(blocks), rng):
        while not add("sample", [(d, tuple(int(o) for o in
                                           rng.integers(n_ops, size=CELL_DEPTHS[d])))
                                 for d in depths]):
            pass
    # random under the teacher's parameter count: uniform over the space's networks, rejected
    # above the budget
    while sum(a["group"] == "random" for a in archs) < exp.scale.random_archs:
        picks = []
        for idx in index:
            cell, ops = list(idx)[int(rng.integers(len(idx)))]
            picks.append((cell, ops))
        add("random", picks)
    write_json(exp.files["archs.json"], {"seed": seed, "budget": {"params": budget},
                                         "model_kwargs": space.model_kwargs(), "archs": archs})
    sample = [a for a in archs if a["group"] == "sample"]
    say("sample", f"{len(sample)} stratified architectures, {min(a['params'] for a in sample):,} "
                  f"to {max(a['params'] for a in sample):,} params; "
                  f"{len(archs) - len(sample)} random under {budget:,}")


# --- step: search -----------------------------------------------------------------------------

SCORES = ("block", "candidate", "cell", "depth", "ops", "nmae", "nmse", "mse")


def write_scores(run: dnax.Run, path: Path) -> None:
    """Every candidate's scores, one row each."""
    rows = []
    for r in run.rankings():
        for i, c in enumerate(r.candidates):
            rows.append({"block": r.block, "candidate": i, "cell": c.cell, "depth": len(c.ops),
                         "ops": " ".join(map(str, c.ops)),
                         **{m: f"{float(r.scores[m][i]):.6g}" for m in SCORES[5:]}})
    write_csv(path, rows, SCORES)


def step_search(exp: Experiment, state: dict[str, Any]) -> None:
    configured(exp)  # writes pipeline.toml
    say("search", f"teacher: {teacher_params():,} params; pipeline {exp.pipeline_toml}")
    until = "select" if exp.scale.pilot_archs else None  # the pool trains the student
    run = dnax.run_pipeline(exp.pipeline_toml, exp.run_dir, registry=registry("search"),
                            until=until)
    t, sel = run.results["teacher"], run.selection
    student = (run.results["retrain"].metrics if until is None else
               {"top1": None, "params": sel.costs["params"], "flops": sel.costs["flops"]})
    write_scores(run, exp.files["scores.csv"])
    write_json(exp.files["search.json"], {
        "teacher": {"top1": t.metrics["top1"], "params": t.metrics["params"],
                    "epochs": t.metrics.get("epochs"), "arch_def": TEACHER_ARCH},
        "student": {"top1": student["top1"], "params": student["params"],
                    "flops": student["flops"], "arch_def": sel.arch_def,
                    "candidates": list(sel.candidates), "rating": sel.score,
                    "predicted_costs": sel.costs, "cells": [], "model_kwargs": sel.model_kwargs},
        "budgets": sel.budgets,
        "key": run.results["rank"].key,
        "blocks": [{"index": b.index, "in_chs": b.in_chs, "out_chs": b.out_chs,
                    "stride": b.stride, "in_size": b.in_size, "out_size": b.out_size,
                    "candidates": run.results["rank"].blocks[b.index].num_candidates}
                   for b in t.blocks],
        "supernet_loss": {f"block{b.block}": b.loss for b in run.results["train"].blocks},
        "stages": run.report["stages"] if run.report else {},
    })
    say("search", f"teacher top-1 {t.metrics['top1']:.2f} % ({exp.scale.teacher_epochs} "
                  f"epochs), student {student['params']:,.0f} params (budget "
                  f"{sel.budgets['params']:,.0f})")


# --- step: blocks -----------------------------------------------------------------------------

BLOCKS = ("block", "candidate", "cell", "depth", "ops", "nmae", "mse", "train_mse", "epochs",
          "images", "seconds")


def block_picks(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec], n: int,
                seed: int) -> list[tuple[int, int]]:
    """``n`` distinct candidates per block (all of them when it has fewer), spread as evenly
    over its cells as their sizes allow (ops uniform), listed round-robin over blocks and cells
    so a prefix is balanced too."""
    rng = np.random.default_rng([seed, 24])
    per_block = []
    for b in blocks:
        by_cell: dict[int, list[int]] = {}
        for i, c in enumerate(space.candidates(b)):
            by_cell.setdefault(c.cell, []).append(i)
        cells = sorted(by_cell, key=lambda c: len(by_cell[c]))
        quota, left = {}, n
        for k, c in enumerate(cells):  # smallest cells first: what they lack goes to the rest
            quota[c] = min(len(by_cell[c]), -(-left // (len(cells) - k)))
            left -= quota[c]
        drawn = [list(rng.permutation(by_cell[c])[:quota[c]]) for c in sorted(by_cell)]
        per_block.append([int(i) for i in itertools.chain.from_iterable(
            itertools.zip_longest(*drawn)) if i is not None])
    return [(b.index, i) for row in itertools.zip_longest(*per_block) for b, i in
            zip(blocks, row, strict=True) if i is not None]


def scoring_images(ctx: dnax.StageContext, batches: int, batch_size: int) -> list[int]:
    """The held-out images the prefix evaluator scores every candidate on (same permutation)."""
    n = len(ctx.plugins.data.dataset("heldout", ctx.data_config))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    return order[:min(n, batches * batch_size) // batch_size * batch_size or n]


@torch.no_grad()
def teacher_features(ctx: dnax.StageContext, teacher: nn.Module, split: str,
                     indices: Sequence[int]) -> list[torch.Tensor]:
    """Per block the teacher's input, then the last block's output (len = blocks + 1)."""
    dataset = ctx.plugins.data.dataset(split, ctx.data_config)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)),
                                         batch_size=256)
    parts: list[list[torch.Tensor]] = []
    for images, _ in loader:
        feats = ctx.plugins.teacher.block_features(teacher, images.to(ctx.device))
        parts = parts or [[] for _ in feats]
        for k, f in enumerate(feats):
            parts[k].append(f.float())
    return [torch.cat(p) for p in parts]


def nmae(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean absolute error over the teacher output's standard deviation (whole tensor)."""
    return float((student - teacher).abs().mean() / teacher.std())


def train_block(cell: nn.Module, ops: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                epochs: int, batch_size: int, lr: float, trainer: Any, seed: int) -> float:
    """Train one candidate alone (MSE to the teacher's block output; Adam with the distill
    trainer's eps and weight decay, here on every parameter; lr x its decay per epoch); the
    last epoch's mean train MSE."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in cell.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, eps=trainer.opt_eps, weight_decay=trainer.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, trainer.lr_decay)
    cell.train()
    last = math.nan
    for _ in range(epochs):
        total, steps = 0.0, 0
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) < 2:
                continue
            loss = F.mse_loss(cell(x[idx], ops), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        sched.step()
        last = total / max(steps, 1)
    return last


def step_blocks(exp: Experiment, state: dict[str, Any]) -> None:
    from dnax.plugins.trainers.distill import block_lrs

    run = dnax.load_run(exp.run_dir)
    config, plugins = configured(exp)
    ctx = context("blocks", config, plugins, exp.run_dir)  # the teacher's weights are there
    space, blocks = plugins.space, run.results["teacher"].blocks
    trainer = config.section("trainer").config
    lrs = block_lrs(trainer.lr, len(blocks))
    teacher = plugins.teacher.load(ctx, run.results["teacher"])
    s = exp.scale
    train_idx = np.random.default_rng([exp.seed, 32]).permutation(
        len(plugins.data.dataset("train", ctx.data_config)))[:s.block_images]
    train = teacher_features(ctx, teacher, "train", train_idx.tolist())
    score = teacher_features(ctx, teacher, "heldout",
                             scoring_images(ctx, s.rank_batches, s.rank_batch))
    del teacher
    rows = read_csv(exp.files["blocks.csv"])
    done = {(int(r["block"]), int(r["candidate"])) for r in rows}
    picks = block_picks(space, blocks, s.block_candidates, exp.seed)
    for k, (b, i) in enumerate(picks):
        if (b, i) in done:
            continue
        took = [float(r["seconds"]) for r in rows if int(r["block"]) == b]
        if not exp.time_left(float(np.median(took)) if took else 0.0):
            state["cut"] = True
            say("blocks", f"deadline: {len(rows)} of {len(picks)} candidates trained")
            return
        t0 = time.perf_counter()
        spec = blocks[b]
        cand = space.candidates(spec)[i]
        torch.manual_seed(exp.seed * 1_000 + k)
        cell = space.build_supernet(spec).cells[cand.cell].to(ctx.device)
        train_mse = train_block(cell, cand.ops, train[b], train[b + 1], s.block_epochs,
                                s.batch_size, lrs[b], trainer, exp.seed * 1_000 + k)
        cell.eval()
        with torch.no_grad():
            out = torch.cat([cell(x, cand.ops) for x in score[b].split(256)])
        row = {"block": b, "candidate": i, "cell": cand.cell, "depth": len(cand.ops),
               "ops": " ".join(map(str, cand.ops)), "nmae": f"{nmae(out, score[b + 1]):.6g}",
               "mse": f"{float(F.mse_loss(out, score[b + 1])):.6g}",
               "train_mse": f"{train_mse:.6g}", "epochs": s.block_epochs, "images": len(train[b]),
               "seconds": f"{time.perf_counter() - t0:.1f}"}
        rows.append(row)
        write_csv(exp.files["blocks.csv"], rows, BLOCKS)
        say("blocks", f"{len(rows)}/{len(picks)}: block {b} candidate {i} (depth "
                      f"{len(cand.ops)}): nmae {row['nmae']} ({row['seconds']} s)")


# --- step: longer -----------------------------------------------------------------------------

def step_longer(exp: Experiment, state: dict[str, Any]) -> None:
    """The search's pipeline with LONGER x the distillation epochs, run up to the rank stage in
    a copy of the search's run folder: its teacher stage is reused (same config), the block
    supernets are trained and every candidate scored again."""
    import shutil

    import tomli_w

    if not exp.scale.longer:
        return
    folder = exp.root / "run-longer"
    if not (folder / "stages" / "teacher.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(exp.run_dir, folder, ignore=shutil.ignore_patterns(
            "supernets", "rankings", "model", "selection*"))
    config = pipeline(exp)
    config["trainer"]["epochs"] = LONGER * exp.scale.distill_epochs
    toml = exp.root / "pipeline-longer.toml"
    atomic_write_text(toml, tomli_w.dumps(config))
    # the copy keeps the search's stage records: train and rank are redone for the new epochs
    run = dnax.run_pipeline(toml, folder, registry=registry("longer"), until="rank", rerun=True)
    if run.results["teacher"].metrics != dnax.load_run(exp.run_dir).results["teacher"].metrics:
        raise SystemExit(f"{folder}: its teacher is not the search's")
    write_scores(run, exp.files["scores-longer.csv"])


# --- step: spos -------------------------------------------------------------------------------

SubnetPath = Sequence[tuple[int, Sequence[int]]]  # per block: (cell, op per layer)


class SPOSNet(nn.Module):
    """SPOS's whole-network supernet: the searched network's stem, fixed stage(s) and head around
    one shared stack of layers per block, as SPOS shares weights: a cell of depth d runs the
    first d layers of the block's deepest cell (the other layers are skipped), each layer with
    its chosen op. (Separate weights per cell, as DNA's block supernets have them, leave the next
    block a different, unrelated input for every cell: such a supernet barely learns.)"""

    def __init__(self, space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec],
                 num_classes: int):
        from dnax.plugins.retrainers.export import build_model

        super().__init__()
        first = [space.candidates(b)[0] for b in blocks]
        net = build_model(space.arch_def(blocks, first), num_classes, space.model_kwargs())
        net.blocks = net.blocks[: len(net.blocks) - len(blocks)]  # the fixed stage(s)
        self.net = net
        stacks = []
        for b in blocks:
            cells = space.cells(b)
            if len({c.out_chs for c in cells}) > 1:
                raise SystemExit(f"spos: block {b.index} has cells of different widths, which "
                                 "one stack of layers cannot share")
            deepest = max(cells, key=lambda c: c.depth).index
            stacks.append(space.build_supernet(b).cells[deepest])
        self.stacks = nn.ModuleList(stacks)

    def forward(self, x: torch.Tensor, path: SubnetPath) -> torch.Tensor:
        net = self.net
        x = net.blocks(net.bn1(net.conv_stem(x)))
        for stack, (_, ops) in zip(self.stacks, path, strict=True):
            x = stack.enter(x)
            for layer, o in zip(stack.layers, ops, strict=False):  # the first len(ops) layers
                x = layer[o](x)
            x = stack.exit(x)
        return net.forward_head(net.bn2(net.conv_head(x)))


def sample_path(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec],
                g: torch.Generator) -> list[tuple[int, tuple[int, ...]]]:
    """SPOS's uniform single path: per block a random cell, then a random op per layer."""
    path = []
    for b in blocks:
        cells = space.cells(b)
        c = int(torch.randint(len(cells), (1,), generator=g))
        ops = torch.randint(len(cells[c].ops), (cells[c].depth,), generator=g)
        path.append((c, tuple(int(o) for o in ops)))
    return path


@torch.no_grad()
def recalibrated_top1(model: SPOSNet, path: SubnetPath, recal: Sequence[torch.Tensor], val: Any,
                      device: str) -> float:
    """Val top-1 (%) of one path after resetting BatchNorm and re-estimating it (cumulative
    average) on ``recal`` batches."""
    for bn in model.modules():
        if isinstance(bn, _BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    for x in recal:
        model(x.to(device), path)
    model.eval()
    hits = total = 0
    for x, y in val:
        hits += int((model(x.to(device), path).argmax(-1) == y.to(device)).sum())
        total += len(y)
    return 100.0 * hits / max(total, 1)


SPOS = ("id", "top1", "recal_batches", "images")
SPOS_STATE, SPOS_WEIGHTS = "resume.pt", "supernet.safetensors"


def train_spos(exp: Experiment, ctx: dnax.StageContext, model: SPOSNet,
               blocks: Sequence[dnax.BlockSpec]) -> bool:
    """Cross-entropy, one uniform path per step, the stand-alone recipe's optimizer, schedule
    and augmentation; resumable per epoch. False when the deadline stopped it."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    s, rd, device, space = exp.scale, ctx.run_dir, ctx.device, ctx.plugins.space
    train = ctx.loader("train", s.batch_size, shuffle=True, augment=True, drop_last=True)
    steps = len(train)
    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=s.spos_epochs,
                                   warmup_epochs=WARMUP, warmup_lr=LR * 1e-3, min_lr=LR * 1e-3,
                                   step_on_epochs=False, updates_per_epoch=steps)
    start, seconds = 0, 0.0
    state = rd.load_state(SPOS_STATE)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, seconds = state["epoch"], state["seconds"]
        say("spos", f"resuming after epoch {start}/{s.spos_epochs}")
    for epoch in range(start, s.spos_epochs):
        if not exp.time_left(seconds / max(epoch, 1) if epoch else 0.0):
            say("spos", f"deadline: {epoch} of {s.spos_epochs} epochs trained")
            return False
        t0 = time.perf_counter()
        seed = exp.seed * 100_003 + epoch  # paths, order, augmentation: the same after a resume
        torch.manual_seed(seed)
        train.generator.manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        model.train()
        total, hits, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(train):
            x, y = x.to(device), y.to(device)
            logits = model(x, sample_path(space, blocks, g))
            loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + i + 1)
            total += loss.item()
            hits += int((logits.argmax(-1) == y).sum())
            seen += len(y)
        sched.step(epoch + 1)
        if not np.isfinite(total):
            raise SystemExit(f"spos: loss is {total} in epoch {epoch + 1}")
        seconds += time.perf_counter() - t0
        rd.save_state(SPOS_STATE, {"epoch": epoch + 1, "seconds": seconds,
                                   "model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
        say("spos", f"epoch {epoch + 1}/{s.spos_epochs}: loss {total / steps:.4f}, train "
                    f"top-1 of the sampled paths {100 * hits / max(seen, 1):.1f} % "
                    f"({time.perf_counter() - t0:.0f} s)")
    rd.save_tensors(SPOS_WEIGHTS, model.state_dict(), kind="spos-supernet",
                    metadata={"epochs": str(s.spos_epochs), "seconds": f"{seconds:.1f}"})
    rd.path(SPOS_STATE).unlink(missing_ok=True)
    return True


def step_spos(exp: Experiment, state: dict[str, Any]) -> None:
    config, plugins = configured(exp)
    blocks = space_blocks(plugins)
    ctx = context("spos", config, plugins, exp.root / "spos")
    torch.manual_seed(exp.seed)
    model = SPOSNet(plugins.space, blocks, plugins.data.num_classes).to(ctx.device)
    if not ctx.run_dir.exists(SPOS_WEIGHTS) and not train_spos(exp, ctx, model, blocks):
        state["cut"] = True
        return
    weights, _ = ctx.run_dir.load_tensors(SPOS_WEIGHTS, kind="spos-supernet")
    spec = read_json(exp.files["archs.json"])
    rows = read_csv(exp.files["spos.csv"])
    done = {int(r["id"]) for r in rows}
    loader = ctx.loader("train", exp.scale.batch_size, shuffle=True)
    recal = [x for _, (x, _) in zip(range(exp.scale.recal_batches), loader, strict=False)]
    val = ctx.loader(exp.scale.spos_split, 256)  # PROTOCOL.md: held-out, never the truth's
    for arch in spec["archs"]:
        if arch["id"] in done:
            continue
        model.load_state_dict(weights)
        path = list(zip(arch["cells"], arch["ops"], strict=True))
        top1 = recalibrated_top1(model, path, recal, val, ctx.device)
        rows.append({"id": arch["id"], "top1": f"{top1:.4f}", "recal_batches": len(recal),
                     "images": exp.scale.spos_split})
        write_csv(exp.files["spos.csv"], rows, SPOS)
        say("spos", f"arch {len(rows)}/{len(spec['archs'])} (id {arch['id']}): "
                    f"top-1 {top1:.2f} %")


# --- step: pilot (PROTOCOL.md's rule: E and n before the truth runs) ------------------------

def pilot_rung(top1: np.ndarray, seconds: Sequence[float], epochs: int) -> dict[str, Any]:
    """One rung of the pilot from its runs' top-1 (architectures x seeds) and wall times:
    the pooled seed SD, the architectures' SD (var(means) - s_seed² / seeds, floored at 0), the
    single-run reliability r1, the expected seed-vs-seed Kendall τ (2/π) arcsin(r1) and the wall
    time per network-epoch."""
    top1 = np.asarray(top1, dtype=np.float64)
    k = top1.shape[1]
    seed_var = float(top1.var(axis=1, ddof=1).mean())
    arch_var = max(float(top1.mean(axis=1).var(ddof=1)) - seed_var / k, 0.0)
    r1 = arch_var / (arch_var + seed_var) if arch_var + seed_var > 0 else 0.0
    expected = 2 / math.pi * math.asin(r1)
    return {"epochs": epochs, "archs": len(top1), "seeds": k, "s_seed": math.sqrt(seed_var),
            "s_arch": math.sqrt(arch_var), "r1": r1, "expected_tau": expected,
            "seconds_per_epoch": float(np.median(seconds)) / epochs,
            "met": expected >= CEILING_GOAL}


def pilot_size(rung: Mapping[str, Any], scale: Scale, workers: int,
               time_left: float | None) -> int | None:
    """PROTOCOL.md's n: the most architectures (at most ``scale.archs``; the pilot's are
    trained) whose truth runs, with the student's and the matched ones', fit ``time_left``
    seconds on ``workers`` processes; None when fewer than ``scale.min_archs`` fit."""
    if time_left is None:
        return scale.archs if scale.archs >= scale.min_archs else None
    per_arch = rung["seconds_per_epoch"] * rung["epochs"] * rung["seeds"]
    fit = scale.pilot_archs + math.floor(workers * max(time_left, 0.0) / per_arch)
    n = min(fit - 1 - scale.matched_archs, scale.archs)  # the student and the matched ones
    return n if n >= scale.min_archs else None


def pilot_state(exp: Experiment) -> dict[str, Any]:
    path = exp.files["pilot.json"]
    return read_json(path) if path.exists() else {"rungs": [], "decision": None}


def pilot_epochs(exp: Experiment) -> int | None:
    """The E the pool trains at now: the decided one, the rung being measured, or None when
    the rule has stopped the run."""
    st = pilot_state(exp)
    if st["decision"] is not None:
        return st["decision"]["epochs"] if st["decision"]["go"] else None
    rungs = len(st["rungs"])
    return exp.scale.epoch_ladder[rungs] if rungs < len(exp.scale.epoch_ladder) else None


def step_pilot(exp: Experiment, state: dict[str, Any]) -> None:
    """Train the pilot's runs (beside the workers), measure each rung, and decide E and n;
    a run whose goal no rung meets, or where n < min_archs fits, stops before the truth runs
    (smoke: the rule is reported and the run goes on at the last rung, to check the rest)."""
    s = exp.scale
    if not s.pilot_archs:
        return
    st = pilot_state(exp)
    while st["decision"] is None:
        epochs = pilot_epochs(exp)
        assert epochs is not None
        pool(exp, state, "pilot", only={t.name for t in tasks(exp) if t.group == "sample"})
        if state["cut"]:
            return
        sample = [a["id"] for a in read_json(exp.files["archs.json"])["archs"]
                  if a["group"] == "sample"][:s.pilot_archs]
        rows = {(int(r["id"]), int(r["seed"])): r for r in read_csv(exp.files["standalone.csv"])
                if r["id"] and int(r["epochs"]) == epochs and int(r["id"]) in sample}
        seeds = exp.truth_seeds
        top1 = [[float(rows[(a, k)]["top1"]) for k in seeds] for a in sample]
        rung = pilot_rung(np.array(top1), [float(r["train_seconds"]) for r in rows.values()],
                          epochs)
        st["rungs"].append(rung)
        say("pilot", f"E = {epochs}: seed SD {rung['s_seed']:.2f}, architectures' SD "
                     f"{rung['s_arch']:.2f}, r1 {rung['r1']:.3f}, expected seed-vs-seed τ "
                     f"{rung['expected_tau']:.2f} (goal {CEILING_GOAL}), "
                     f"{rung['seconds_per_epoch']:.1f} s per network-epoch")
        last = len(st["rungs"]) == len(s.epoch_ladder)
        if rung["met"] or last:
            left = None if exp.deadline is None else exp.deadline - time.time()
            workers = s.workers if exp.workers is None else exp.workers
            n = pilot_size(rung, s, workers, left)
            go = rung["met"] and n is not None
            reason = ("" if go else "no E on the ladder reaches the goal" if not rung["met"]
                      else f"fewer than {s.min_archs} architectures fit the time left")
            st["decision"] = {"go": go or not s.pilot_binding, "met": go, "epochs": epochs,
                              "n": n if n is not None else s.min_archs, "reason": reason,
                              "time_left": left, "workers": workers}
            say("pilot", f"E = {epochs}, n = {st['decision']['n']}" if go else
                f"the rule stops the run: {reason}" + ("" if s.pilot_binding else
                                                       " (smoke: going on regardless)"))
        write_json(exp.files["pilot.json"], st)
    if not st["decision"]["go"]:
        state["cut"] = True


# --- step: matched (random architectures the student's size) ----------------------------------

def step_matched(exp: Experiment, state: dict[str, Any]) -> None:
    """``matched_archs`` architectures drawn uniformly from the space and kept when their params
    lie within MATCHED of the student's (the ranking's cost tables filter, timm's count
    decides) -> archs.json, group ``matched``."""
    from dnax.correlate import network_costs

    s = exp.scale
    spec = read_json(exp.files["archs.json"])
    if not s.matched_archs or any(a["group"] == "matched" for a in spec["archs"]):
        return
    _, plugins = configured(exp)
    space, blocks = plugins.space, space_blocks(plugins)
    index = [candidate_index(space, b) for b in blocks]
    student = read_json(exp.files["search.json"])["student"]
    target = float(student["params"])
    run = dnax.load_run(exp.run_dir)
    rankings = run.rankings()
    rng = np.random.default_rng([spec["seed"], 48])
    seen = {tuple(a["candidates"]) for a in spec["archs"]} | {tuple(student["candidates"])}
    found: list[dict[str, Any]] = []
    for _ in range(100):  # rounds of 20,000 uniform draws
        draws = np.stack([rng.integers(len(r.candidates), size=20_000) for r in rankings], 1)
        params = network_costs(rankings, draws, "params", run.fixed_costs["params"])
        for row in draws[np.abs(params - target) <= MATCHED * target]:
            key = tuple(int(i) for i in row)
            if key in seen:
                continue
            seen.add(key)
            cands = [space.candidates(b)[i] for b, i in zip(blocks, key, strict=True)]
            arch = network(space, blocks, index, [(c.cell, tuple(c.ops)) for c in cands])
            if abs(arch["params"] - target) <= MATCHED * target:  # timm's count decides
                found.append(arch)
            if len(found) == s.matched_archs:
                break
        if len(found) == s.matched_archs:
            break
    else:
        raise SystemExit(f"matched: only {len(found)} architectures within "
                         f"{MATCHED:.0%} of the student's {target:,.0f} params in 2,000,000 draws")
    n = len(spec["archs"])
    spec["archs"] += [{"id": n + k, "group": "matched", **a} for k, a in enumerate(found)]
    write_json(exp.files["archs.json"], spec)
    say("matched", f"{len(found)} random architectures of {min(a['params'] for a in found):,} "
                   f"to {max(a['params'] for a in found):,} params (student {target:,.0f})")


# --- step: standalone (a pool of training runs, shared by worker processes) -------------------

STANDALONE = ("name", "group", "id", "seed", "top1", "top5", "params", "flops", "epochs",
              "train_seconds", "seconds")


@dataclass(frozen=True)
class Task:
    """One network trained from scratch with one seed."""

    name: str  # folder and row name: archNNN-sK, teacher-sK, student-sK (with a pilot: -eE)
    group: str  # sample, random, matched, teacher, student
    id: int | None  # the architecture's id in archs.json
    seed: int
    epochs: int | None = None  # None: the scale's standalone_epochs


def tasks(exp: Experiment) -> list[Task]:
    """Every stand-alone run, most needed first: half the sample, the networks at the teacher's
    budget (teacher, random, student), the other half (a deadline cuts the end of this list).
    With a pilot: the pilot's runs at the rung's E; once E and n are decided, the student, the
    matched architectures, then the sample's first n; none when the rule has stopped the run."""
    archs = read_json(exp.files["archs.json"])["archs"]
    seeds = exp.truth_seeds
    s = exp.scale
    if s.pilot_archs:
        epochs = pilot_epochs(exp)
        if epochs is None:
            return []
        decision = pilot_state(exp)["decision"]

        def at(group: str, ids: Sequence[int | None]) -> list[Task]:
            name = "student" if group == "student" else "arch{:03d}"
            return [Task(f"{name.format(i)}-s{k}-e{epochs}", group, i, k, epochs)
                    for i in ids for k in seeds]

        sample = [a["id"] for a in archs if a["group"] == "sample"]
        if decision is None:
            return at("sample", sample[:s.pilot_archs])
        matched = [a["id"] for a in archs if a["group"] == "matched"]
        return [*at("sample", sample[:s.pilot_archs]), *at("student", [None]),
                *at("matched", matched), *at("sample", sample[s.pilot_archs:decision["n"]])]

    def of(group: str) -> list[Task]:
        return [Task(f"arch{a['id']:03d}-s{k}", group, a["id"], k)
                for a in archs if a["group"] == group for k in seeds]

    sample = of("sample")
    half = len(sample) // 2 // s.seeds * s.seeds
    fixed = [Task(f"{g}-s{k}", g, None, k) for g in ("teacher", "student") for k in seeds]
    return [*sample[:half], fixed[0], *of("random"), *fixed[1:], *sample[half:]]


def claim(exp: Experiment, task: Task) -> bool:
    """Take ``task`` for this process (a claim file with its pid); a dead owner's claim is
    taken over."""
    path = exp.root / "claims" / task.name
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with suppress(ValueError, OSError):
                pid = int(path.read_text() or 0)
                if pid == os.getpid():
                    return True
                if pid:
                    try:
                        os.kill(pid, 0)
                        return False  # its owner is alive
                    except ProcessLookupError:
                        pass
            with suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def selection_of(exp: Experiment, task: Task, archs: Mapping[int, Any], kwargs: Mapping
                 ) -> dnax.Selection | None:
    """The network a task trains (None: the student, before the search has selected it)."""
    if task.group == "teacher":
        arch_def = [list(a) for a in TEACHER_ARCH]
    elif task.group == "student":
        if not exp.files["search.json"].exists():
            return None
        arch_def = read_json(exp.files["search.json"])["student"]["arch_def"]
    else:
        arch_def = archs[task.id]["arch_def"]
    return dnax.Selection((), 0.0, {}, {}, tuple(tuple(s) for s in arch_def), dict(kwargs))


def train_one(exp: Experiment, task: Task, config: Any, plugins: Any,
              selection: dnax.Selection) -> dict[str, float]:
    """A task's metrics: the search's own retraining for the student's first seed (the same
    recipe and seed), a finished model folder's, or a (resumed) training run."""
    import attrs

    from dnax.plugins.retrainers.export import load_meta
    from dnax.plugins.retrainers.timm_retrainer import TimmRetrainer

    if task.group == "student" and task.seed == exp.seed and not exp.scale.pilot_archs:
        return load_meta(exp.run_dir / "model")["metrics"]
    folder = exp.root / "standalone" / task.name
    if (folder / "model" / "model.json").exists():  # trained, killed before its row
        return load_meta(folder / "model")["metrics"]
    recipe = attrs.evolve(config.section("retrainer").config, onnx=False)
    if task.epochs is not None:
        recipe = attrs.evolve(recipe, epochs=task.epochs)
    ctx = context("standalone", config, plugins, folder, seed=task.seed)
    return TimmRetrainer(recipe).retrain(ctx, selection).metrics


def pool(exp: Experiment, state: dict[str, Any], who: str,
         only: set[str] | None = None) -> None:
    """Train unclaimed tasks until none is left (or the deadline); rows are appended as each
    run finishes, so any number of processes can share the list. ``only``: return once these
    runs are done (the pilot's rung). A worker (``who`` starts with "pool") waits while tasks
    it cannot take yet may still come: the student before the search, the truth runs before
    the pilot's decision."""
    config, plugins = configured(exp)
    parent = os.getppid()
    while True:
        spec = read_json(exp.files["archs.json"])
        archs = {a["id"]: a for a in spec["archs"]}
        todo = tasks(exp)
        rows = read_csv(exp.files["standalone.csv"])
        done = {r["name"] for r in rows}
        pending = [t for t in todo if t.name not in done and (only is None or t.name in only)]
        waiting = who.startswith("pool") and os.getppid() == parent and more_to_come(exp)
        if not pending and not (waiting and only is None):
            return
        took = [float(r["seconds"]) / int(r["epochs"]) for r in rows if r["group"] != "student"]
        need = float(np.median(took)) * (pending[0].epochs or exp.scale.standalone_epochs) \
            if took and pending else 0.0
        if not exp.time_left(need):
            state["cut"] = True
            say(who, f"deadline: {len(done)} of {len(todo)} runs finished")
            return
        task = selection = None
        for t in pending:
            selection = selection_of(exp, t, archs, spec["model_kwargs"])
            if selection is not None and claim(exp, t):
                task = t
                break
        if task is None:
            if not (waiting or only is not None):
                return  # the rest is claimed by live processes
            time.sleep(1.0)  # claimed runs of the rung, or work still to come
            continue
        t0 = time.perf_counter()
        m = train_one(exp, task, config, plugins, selection)
        if task.id is not None and m["params"] != archs[task.id]["params"]:
            raise SystemExit(f"{task.name}: archs.json says {archs[task.id]['params']:,} "
                             f"params, timm built {m['params']:,.0f}")
        append_row(exp.files["standalone.csv"], {
            "name": task.name, "group": task.group, "id": "" if task.id is None else task.id,
            "seed": task.seed, "top1": f"{m['top1']:.4f}", "top5": f"{m['top5']:.4f}",
            "params": int(m["params"]), "flops": int(m["flops"]), "epochs": int(m["epochs"]),
            "train_seconds": f"{m['seconds']:.1f}",
            "seconds": f"{time.perf_counter() - t0:.1f}"}, STANDALONE)
        say(who, f"{task.name} ({task.group}): top-1 {m['top1']:.2f} %, {m['params']:,.0f} "
                 f"params ({time.perf_counter() - t0:.0f} s)")


def more_to_come(exp: Experiment) -> bool:
    """Whether runs may still be added to the task list: the student's before the search; with
    a pilot, the truth runs before its decision and the matched ones before their step."""
    if not exp.scale.pilot_archs:
        return not exp.finished("search")
    decision = pilot_state(exp)["decision"]
    if decision is not None and not decision["go"]:
        return False
    return decision is None or not (exp.finished("search") and exp.finished("matched"))


def step_standalone(exp: Experiment, state: dict[str, Any]) -> None:
    pool(exp, state, "standalone")
    for proc in state.get("workers", ()):
        proc.wait()
    if not state["cut"]:
        done = {r["name"] for r in read_csv(exp.files["standalone.csv"])}
        missing = [t.name for t in tasks(exp) if t.name not in done]
        if missing:  # a worker died or the deadline cut it
            state["cut"] = True
            say("standalone", f"{len(missing)} runs unfinished (first: {missing[0]}); rerun")


# --- step: table ------------------------------------------------------------------------------

def stats() -> Any:
    """dnax's correlation module (``dnax.correlate`` the name is its function)."""
    import importlib

    return importlib.import_module("dnax.correlate")


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def _ci(stat: Mapping[str, Any], spec: str = ".2f") -> str:
    lo, hi = stat["ci"]
    return f"{_f(stat['value'], spec)} [{_f(lo, spec)}, {_f(hi, spec)}]"


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(HERE.parent.parent).as_posix()
    except ValueError:
        return path.name


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


class Raw:
    """The raw files of one results folder, joined."""

    def __init__(self, exp: Experiment):
        for name in Experiment.RAW:
            if not exp.files[name].exists() and name not in Experiment.OPTIONAL:
                raise SystemExit(f"{exp.files[name]}: missing; run the steps before `table`")
        f = exp.files
        self.settings, self.steps = read_json(f["settings.json"]), read_json(f["steps.json"])
        self.search, spec = read_json(f["search.json"]), read_json(f["archs.json"])
        self.archs = spec["archs"]
        self.budget = spec["budget"]["params"]
        self.scores = {(int(r["block"]), int(r["candidate"])): r for r in read_csv(f["scores.csv"])}
        self.longer = {(int(r["block"]), int(r["candidate"])): r
                       for r in read_csv(f["scores-longer.csv"])}  # {} when not made
        self.pilot = read_json(f["pilot.json"]) if f["pilot.json"].exists() else None
        self.blocks = read_csv(f["blocks.csv"])
        self.spos = {int(r["id"]): float(r["top1"]) for r in read_csv(f["spos.csv"])}
        self.all_runs = self.runs = read_csv(f["standalone.csv"])
        decision = (self.pilot or {}).get("decision")
        self.epochs = self.settings["standalone_epochs"]  # every stand-alone run's
        if decision:  # the truth is the runs at the decided E (the pilot's other rungs aside)
            self.epochs = decision["epochs"]
            self.runs = [r for r in self.runs if int(r["epochs"]) == self.epochs]
        self.seeds = sorted({int(r["seed"]) for r in self.runs}) or [self.settings["seed"]]
        for a in self.archs:  # the sample's candidate indices are the ranking's
            for b, (i, cell, ops) in enumerate(zip(a["candidates"], a["cells"], a["ops"],
                                                   strict=True)):
                r = self.scores.get((b, i))
                if r is None or (int(r["cell"]), r["ops"]) != (cell, " ".join(map(str, ops))):
                    raise SystemExit(f"{f['archs.json']}: arch {a['id']} block {b} candidate "
                                     f"{i} is not the one scores.csv lists")
            a["rating"] = self.rating(self.scores, a["candidates"])
            a["rating_longer"] = (self.rating(self.longer, a["candidates"]) if self.longer
                                  else math.nan)

    def rating(self, scores: Mapping[tuple[int, int], Any], candidates: Sequence[int]) -> float:
        """An architecture's DNA rating: the sum of its blocks' scores."""
        return sum(float(scores[(b, i)][self.search["key"]]) for b, i in enumerate(candidates))

    def top1(self, group: str, id: int | None = None) -> dict[int, float]:
        """Stand-alone val top-1 by seed."""
        return {int(r["seed"]): float(r["top1"]) for r in self.runs if r["group"] == group
                and (id is None or r["id"] == str(id))}


def ranking_section(raw: Raw) -> tuple[list[str], dict[str, Any] | None]:
    c = stats()
    sample = [a for a in raw.archs if a["group"] == "sample" and raw.top1("sample", a["id"])]
    if len(sample) < 3:
        return ["Fewer than 3 architectures trained: no ranking figures yet.", ""], None
    truth = np.array([[raw.top1("sample", a["id"]).get(s, math.nan) for s in raw.seeds]
                      for a in sample])
    spos = [raw.spos.get(a["id"], math.nan) for a in sample]
    have_spos = all(math.isfinite(v) for v in spos)
    n_boot = raw.settings.get("n_boot", 2000)
    rep = c.analyse([a["rating"] for a in sample], truth, params=[a["params"] for a in sample],
                    versus=spos if have_spos else None, versus_name="SPOS",
                    seeds=[str(s) for s in raw.seeds], n_boot=n_boot, seed=0)
    p = rep["predictors"]
    nc = rep["noise_ceiling"]
    out = [
        f"{rep['n']} architectures, stratified (every combination of cell depths over the "
        f"blocks in turn, then ops uniformly), each trained from scratch for "
        f"{raw.epochs} epochs with seeds {', '.join(map(str, raw.seeds))} "
        f"({rep['measurements']} runs). Truth = mean val top-1 over the seeds. Figures are "
        "Kendall's τ-b and Spearman's rho with 95 % bootstrap intervals "
        f"({n_boot:,} resamples of the architectures, paired across predictors).",
        "",
        "| predictor | Kendall τ [95 % CI] | Spearman rho [95 % CI] | top pick's true rank |",
        "|---|---:|---:|---:|",
    ]
    names = {"dnax": "DNA rating (summed block nmae, lower = better)",
             "SPOS": "SPOS path top-1 (one supernet, BN recalibrated)",
             "params": "params (more = better; trivial baseline)"}
    mean = np.nanmean(truth, axis=1)
    longer = None
    if raw.longer:
        longer = c.association([-a["rating_longer"] for a in sample], mean, n_boot=n_boot,
                               seed=0)
        longer.update(c.regret([-a["rating_longer"] for a in sample], mean))
    size = {"flops": [a["flops"] for a in sample],  # trivial baselines beside params
            "depth": [sum(a["depths"]) for a in sample]}
    for k, x in size.items():
        p[k] = {**c.association(x, mean, n_boot=n_boot, seed=0), **c.regret(x, mean)}
    p = {"dnax": p["dnax"], **({"longer": longer} if longer else {}),
         **{k: v for k, v in p.items() if k != "dnax"}}
    names = {"dnax": names["dnax"],
             "longer": f"DNA rating, block supernets trained {LONGER}x as long",
             **{k: v for k, v in names.items() if k != "dnax"},
             "flops": "FLOPs (more = better; trivial baseline)",
             "depth": "depth, total layers (more = better; trivial baseline)"}
    for k, name in names.items():
        if k in p:
            out.append(f"| {name} | {_ci(p[k]['kendall'])} | {_ci(p[k]['spearman'])} | "
                       f"{p[k]['true_rank']} of {rep['n']} |")
    if nc:
        out.append(f"| noise ceiling: seed {raw.seeds[0]} vs seed {raw.seeds[1]} | "
                   f"{_f(nc['kendall'], '.2f')} [{_f(nc['ci'][0], '.2f')}, "
                   f"{_f(nc['ci'][1], '.2f')}] (n = {nc['n']}) | | |")
    out.append("")
    idx = c.resamples(len(sample), n_boot, 0)  # the resamples analyse drew
    if "difference" in rep:
        if longer:
            g2, vs = -np.array([a["rating_longer"] for a in sample]), np.array(spos)
            diff = c.kendall_rows(g2[idx], mean[idx]) - c.kendall_rows(vs[idx], mean[idx])
            rep["difference_longer"] = {
                "kendall": longer["kendall"]["value"] - p["SPOS"]["kendall"]["value"],
                "ci": c.interval(diff, 0.95), "p": float((diff[np.isfinite(diff)] <= 0).mean())}
        for label, d in (("DNA", rep["difference"]),
                         (f"DNA, {LONGER}x longer supernets", rep.get("difference_longer"))):
            if d is None:
                continue
            out.append(f"- τ({label}) - τ(SPOS) = {_f(d['kendall'], '.2f')}, 95 % CI "
                       f"[{_f(d['ci'][0], '.2f')}, {_f(d['ci'][1], '.2f')}]; share of resamples "
                       f"with no advantage over SPOS: {_f(d['p'], '.3f')} (paired bootstrap)")
    for label, g in (("DNA", -np.array([a["rating"] for a in sample])),
                     (f"DNA, {LONGER}x longer supernets",
                      -np.array([a["rating_longer"] for a in sample]))):
        if not np.isfinite(g).all():
            continue
        for k in ("params", "flops", "depth"):
            x = np.array([a[k] for a in sample]) if k != "depth" else np.array(size["depth"])
            diff = c.kendall_rows(g[idx], mean[idx]) - c.kendall_rows(x[idx], mean[idx])
            d = c.kendall_rows(g[None], mean[None])[0] - c.kendall_rows(x[None], mean[None])[0]
            ci = c.interval(diff, 0.95)
            if label == "DNA":  # PROTOCOL.md's endpoints read these
                rep.setdefault("versus_size", {})[k] = {"value": float(d), "ci": ci}
            out.append(f"- τ({label}) - τ({k}) = {_f(d, '.2f')}, 95 % CI [{_f(ci[0], '.2f')}, "
                       f"{_f(ci[1], '.2f')}] (paired bootstrap)")
    out += noise_lines(truth)
    pk = rep.get("partial_kendall")
    if pk:
        out.append(f"- partial τ of the DNA rating given params: {_ci(pk)}")
        out.append("- τ of the DNA rating within parameter terciles: " + "; ".join(
            f"{t['params'][0]:,.0f}-{t['params'][1]:,.0f} params (n = {t['n']}): "
            f"{_f(t['kendall']['value'], '.2f')}" for t in rep.get("terciles", [])))
    out.append("")
    return out, {**rep, "sample": sample, "truth": truth, "spos": spos, "longer": longer}


def verdict(e1: Mapping[str, Any], e2: Mapping[str, Any]) -> tuple[str, str]:
    """PROTOCOL.md's rule on the primary endpoints 1 (vs FLOPs) and 2 (vs params), each
    ``{"value", "ci"}``: success, failure or inconclusive, and why."""
    named = (("τ(DNA) - τ(FLOPs)", e1), ("τ(DNA) - τ(params)", e2))
    if e1["ci"][0] > 0 and e2["ci"][0] > 0:
        return "success", "both intervals lie above 0"
    below = [n for n, e in named if e["ci"][1] < 0 or e["value"] <= 0]
    if below:
        return "failure", f"{' and '.join(below)}: point estimate <= 0 or interval below 0"
    wide = [f"{n}'s interval" for n, e in named if e["ci"][0] <= 0]
    return "inconclusive", " and ".join(wide) + (" includes 0" if len(wide) == 1 else
                                                 " include 0")


def student_vs_matched(student: Sequence[float], matched: Sequence[Sequence[float]],
                       n_boot: int, seed: int = 0) -> dict[str, Any]:
    """The student's mean top-1 minus the matched architectures' mean (all their runs), with a
    percentile interval from resampling the architectures and, within each, the seeds (and
    the student's seeds)."""
    c = stats()
    st, m = np.asarray(student, dtype=np.float64), np.asarray(matched, dtype=np.float64)
    rng = np.random.default_rng(seed)
    a = rng.integers(len(m), size=(n_boot, len(m)))
    k = rng.integers(m.shape[1], size=(n_boot, len(m), m.shape[1]))
    boot_m = m[a[..., None], k].mean(axis=(1, 2))
    boot_s = st[rng.integers(len(st), size=(n_boot, len(st)))].mean(axis=1)
    return {"value": float(st.mean() - m.mean()), "ci": c.interval(boot_s - boot_m, 0.95),
            "student": float(st.mean()), "matched": float(m.mean()), "archs": len(m)}


def protocol_section(raw: Raw, rank: dict[str, Any] | None, exp: Experiment) -> list[str]:
    """PROTOCOL.md's pilot, endpoints and verdict (scales with a pilot); the scatter PNGs."""
    pilot = raw.pilot or {"rungs": [], "decision": None}
    out = ["The pilot (PROTOCOL.md's rule): the sample's first "
           f"{raw.settings['pilot_archs']} architectures x seeds "
           f"{', '.join(map(str, raw.seeds))}; goal: expected seed-vs-seed τ "
           f"(2/π) arcsin(r1) >= {CEILING_GOAL}.", "",
           "| E | seed SD | architectures' SD | r1 | expected τ | s per network-epoch | met |",
           "|---:|---:|---:|---:|---:|---:|---|"]
    for r in pilot["rungs"]:
        out.append(f"| {r['epochs']} | {r['s_seed']:.2f} | {r['s_arch']:.2f} | {r['r1']:.3f} | "
                   f"{r['expected_tau']:.2f} | {r['seconds_per_epoch']:.1f} | "
                   f"{'yes' if r['met'] else 'no'} |")
    d = pilot["decision"]
    if d is None:
        return [*out, "", "The pilot has not decided yet: no endpoints.", ""]
    left = "no deadline" if d["time_left"] is None else f"{d['time_left']:.0f} s left"
    out += ["", f"Decision: E = {d['epochs']}, n = {d['n']} ({left}, {d['workers']} workers)"
            + ("" if d["met"] else f"; the rule would stop the run: {d['reason']}"
               + ("" if raw.settings["pilot_binding"] else " (smoke: it went on)")), ""]
    if rank is None:
        return [*out, "Fewer than 3 architectures trained: no endpoints.", ""]
    sample, truth = rank["sample"], rank["truth"]
    mean = np.nanmean(truth, axis=1)
    n_boot = raw.settings["n_boot"]
    # the ranking section's paired differences (its resamples are analyse's, the same for
    # every predictor)
    size = rank["versus_size"]
    ends = {"FLOPs": size["flops"], "params": size["params"], "depth": size["depth"]}
    if "difference" in rank:
        ends["SPOS"] = {"value": rank["difference"]["kendall"], "ci": rank["difference"]["ci"]}
    pk = rank["partial_kendall"]
    pairs = (rank["noise_ceiling"] or {}).get("pairs")
    ceiling = float(pairs[0]["kendall"]) if pairs else math.nan  # the first two seeds
    out += [f"Endpoints over n = {len(sample)} architectures, paired bootstrap ({n_boot:,} "
            "resamples of the architectures, the same for every predictor), 95 % percentile "
            "intervals:", "",
            "| endpoint | value [95 % CI] |", "|---|---:|",
            f"| primary 1: τ(DNA) - τ(FLOPs) | {_ci(ends['FLOPs'])} |",
            f"| primary 2: τ(DNA) - τ(params) | {_ci(ends['params'])} |",
            f"| primary 3: partial τ of DNA given params | {_ci(pk)} |"]
    for k in ("SPOS", "depth"):
        if k in ends:
            out.append(f"| secondary: τ(DNA) - τ({k}) | {_ci(ends[k])} |")
    out.append(f"| single-seed noise ceiling: τ(seed {raw.seeds[0]}, seed {raw.seeds[1]}) | "
               f"{_f(ceiling, '.2f')} |")
    matched = [a for a in raw.archs if a["group"] == "matched"]
    st = raw.top1("student")
    m = [[raw.top1("matched", a["id"]).get(k, math.nan) for k in raw.seeds] for a in matched]
    vs = None
    if matched and st and np.isfinite(m).all():
        vs = student_vs_matched([st[k] for k in sorted(st)], m, n_boot)
        out.append(f"| secondary: student - {vs['archs']} size-matched random architectures "
                   f"(top-1 points) | {_ci(vs)} |")
    word, why = verdict(ends["FLOPs"], ends["params"])
    rank["endpoints"] = {"ends": ends, "verdict": word, "why": why, "ceiling": ceiling,
                         "matched": vs}
    out += ["", f"Verdict by PROTOCOL.md's rule: **{word}** ({why})"
            + ("; **underpowered**: the single-seed ceiling is below 0.6" if not ceiling >= 0.6
               else "") + ".", ""]
    preds = {"DNA rating (minus summed nmae)": -np.array([a["rating"] for a in sample]),
             "FLOPs": np.array([a["flops"] for a in sample], dtype=np.float64),
             "params": np.array([a["params"] for a in sample], dtype=np.float64),
             "SPOS": np.array(rank["spos"], dtype=np.float64),
             "depth": np.array([sum(a["depths"]) for a in sample], dtype=np.float64)}
    out += scatter_pngs(exp, sample, mean, preds)
    return out


def scatter_pngs(exp: Experiment, sample: Sequence[Mapping[str, Any]], truth: np.ndarray,
                 preds: Mapping[str, np.ndarray]) -> list[str]:
    """One scatter per predictor (truth against it) -> scatter-<k>.png; the Markdown links."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnax.rundir import save_figure

    lines = []
    for k, (name, x) in enumerate(preds.items()):
        if not np.isfinite(x).all():
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.6))
        ax.scatter(x, truth, s=14)
        ax.set_xlabel(name)
        ax.set_ylabel("stand-alone val top-1 (%, mean of seeds)")
        tau = stats().kendall_rows(x[None], truth[None])[0]
        ax.set_title(f"τ = {tau:.2f}, n = {len(sample)}", fontsize=10)
        fig.tight_layout()
        path = save_figure(fig, exp.root / f"scatter-{k}.png")
        lines.append(f"- [{name}]({path.name})")
    return ["Scatter plots:", "", *lines, ""]


def noise_lines(truth: np.ndarray) -> list[str]:
    """How much of the stand-alone accuracy is the architecture and how much the seed: pooled
    seed standard deviation, the spread of the architectures' means, and the reliability of the
    mean of the seeds (Spearman-Brown from Pearson's r between two seeds)."""
    full = truth[np.isfinite(truth).all(axis=1)]
    if full.shape[1] < 2 or len(full) < 3:
        return []
    k = full.shape[1]
    seed_sd = float(np.sqrt(full.var(axis=1, ddof=1).mean()))
    arch_sd = float(full.mean(axis=1).std(ddof=1))
    r1 = float(np.corrcoef(full[:, 0], full[:, 1])[0, 1])
    rel = k * r1 / (1 + (k - 1) * r1)
    return [f"- seed noise: the same architecture's top-1 differs between seeds by a pooled "
            f"standard deviation of {seed_sd:.2f} points; the architectures' mean top-1 spread "
            f"by {arch_sd:.2f} points (standard deviation over {len(full)}). Pearson's r "
            f"between seeds {r1:.2f}, so the mean of {k} seeds has a reliability of {rel:.2f} "
            f"(Spearman-Brown) and no predictor can reach a Pearson r above about "
            f"{math.sqrt(max(rel, 0.0)):.2f} against it"]


def spos_section(raw: Raw, rank: dict[str, Any] | None) -> list[str]:
    s = raw.settings
    if rank is None or not raw.spos:
        return ["SPOS not scored yet.", ""]
    spos = [v for v in rank["spos"] if math.isfinite(v)]
    alone = np.nanmean(rank["truth"], axis=1)
    return [
        f"Sanity of the baseline: SPOS's supernet was trained {s['spos_epochs']} epochs with one "
        "uniform path per step; each architecture's path, with BatchNorm recalibrated on "
        f"{s['recal_batches']} train batches, reaches a mean {s.get('spos_split', 'val')} "
        f"top-1 of {_mean(spos):.2f} % "
        f"(range {min(spos):.2f}-{max(spos):.2f}), against {_mean(alone):.2f} % "
        f"(range {alone.min():.2f}-{alone.max():.2f}) for the same architectures trained alone "
        f"for {raw.epochs} epochs (val).",
        "",
    ]


def block_section(raw: Raw) -> tuple[list[str], list[dict[str, Any]]]:
    c = stats()
    out = [
        "Per block, candidates spread evenly over its cells (depths "
        f"{', '.join(map(str, CELL_DEPTHS))}) were each trained alone for "
        f"{raw.settings['block_epochs']} epochs on {raw.settings['block_images']:,} train images' "
        "cached teacher features (MSE; Adam with the distillation trainer's learning rate, "
        "decay and weight decay), "
        "then scored like the supernet (nmae on the same held-out images). τ of the supernet's "
        "score against the stand-alone loss (both lower = better):",
        "",
        "| block | supernets | n | Kendall τ [95 % CI] | Spearman rho [95 % CI] | "
        "within-depth τ | supernet nmae by depth | stand-alone nmae by depth |",
        "|---:|---|---:|---:|---:|---|---|---|",
    ]
    found = []
    epochs = raw.settings["distill_epochs"]
    for b in sorted({int(r["block"]) for r in raw.blocks}):
        rows = [r for r in raw.blocks if int(r["block"]) == b]
        if len(rows) < 3:
            continue
        alone = np.array([float(r["nmae"]) for r in rows])
        depth = np.array([int(r["depth"]) for r in rows])
        for label, scores in ((f"{epochs} epochs", raw.scores),
                              (f"{LONGER * epochs} epochs", raw.longer)):
            if not scores:  # no ``longer`` step at this scale
                continue
            sup = np.array([float(scores[(b, int(r["candidate"]))][raw.search["key"]])
                            for r in rows])
            rep = c.analyse(sup, alone, lower_is_better=True, n_boot=2000, seed=0)
            within = []
            for d in sorted(set(depth)):
                k = depth == d
                if k.sum() >= 3:
                    w = c.analyse(sup[k], alone[k], lower_is_better=True, n_boot=200, seed=0)
                    within.append(f"{d}: {_f(w['predictors']['dnax']['kendall']['value'], '.2f')}")
            by_sup = {int(d): float(sup[depth == d].mean()) for d in sorted(set(depth))}
            by_alone = {int(d): float(alone[depth == d].mean()) for d in sorted(set(depth))}
            found.append({"block": b, "label": label, "n": len(rows), "rep": rep, "sup": by_sup,
                          "alone": by_alone})
            pk = rep["predictors"]["dnax"]
            out.append(f"| {b} | {label} | {len(rows)} | {_ci(pk['kendall'])} | "
                       f"{_ci(pk['spearman'])} | {'; '.join(within)} | "
                       + ", ".join(f"{d}: {v:.3f}" for d, v in by_sup.items()) + " | "
                       + ", ".join(f"{d}: {v:.3f}" for d, v in by_alone.items()) + " |")
    out.append("")
    for label in dict.fromkeys(f["label"] for f in found):
        group = [f for f in found if f["label"] == label]
        agree = sum(min(f["sup"], key=f["sup"].get) == min(f["alone"], key=f["alone"].get)
                    for f in group)
        out.append(f"- supernets trained {label}: in {agree} of {len(group)} blocks the depth "
                   "with the lowest mean supernet score is also the depth whose candidates, "
                   "trained alone, reach the lowest mean loss")
    if found:
        out += ["- depths (layers per cell) of the searched student: "
                + ", ".join(str(raw.scores[(b, i)]["depth"]) for b, i in
                            enumerate(raw.search["student"]["candidates"])), ""]
    return out, found


def budget_section(raw: Raw) -> tuple[list[str], dict[str, float]]:
    s, st, t = raw.settings, raw.search["student"], raw.search["teacher"]
    seeds = raw.seeds
    fraction = s.get("budget_fraction", 1.0)
    budget = raw.search["budgets"]["params"]
    out = [
        f"Every network below is trained from scratch with the same recipe for "
        f"{raw.epochs} epochs, seeds {', '.join(map(str, seeds))}. The student is "
        f"the lowest summed block `{raw.search['key']}` with params ≤ "
        + (f"the teacher's ({budget:,.0f})" if fraction == 1 else
           f"{fraction:.0%} of the teacher's ({budget:,.0f} of {raw.budget:,})") + "; "
        + ("random architectures are drawn uniformly from the space and kept when under the "
           f"teacher's {raw.budget:,}; " if s["random_archs"] else "")
        + (f"matched architectures likewise, kept when within ±{MATCHED:.0%} of the student's "
           "params; " if s.get("matched_archs") else "")
        + f"the teacher the blocks were distilled from was trained for {s['teacher_epochs']} "
        f"epochs: {t['top1']:.2f} %.",
        "",
        "| network | params | FLOPs (M) | " + " | ".join(f"top-1 seed {k} (%)" for k in seeds)
        + " | mean (%) |",
        "|---|---:|---:|" + "---:|" * (len(seeds) + 1),
    ]
    flops = {r["group"]: int(r["flops"]) for r in raw.runs if r["group"] in ("teacher", "student")}
    means: dict[str, float] = {}

    def row(name: str, params: float, fl: float, acc: Mapping[int, float]) -> float:
        m = _mean([acc[k] for k in seeds if k in acc])
        out.append(f"| {name} | {params:,.0f} | {fl / 1e6:.2f} | "
                   + " | ".join(_f(acc.get(k), ".2f") for k in seeds) + f" | {_f(m, '.2f')} |")
        return m

    if raw.top1("teacher"):
        means["teacher"] = row("teacher", t["params"], flops.get("teacher", math.nan),
                               raw.top1("teacher"))
    means["student"] = row("searched student", st["params"], flops.get("student", math.nan),
                           raw.top1("student"))
    rand = []
    for a in raw.archs:
        if a["group"] in ("random", "matched") and raw.top1(a["group"], a["id"]):
            rand.append(row(f"{a['group']} {a['id']}", a["params"], a["flops"],
                            raw.top1(a["group"], a["id"])))
    means["random"] = _mean(rand)
    out += ["", f"Mean of the {len(rand)} random architectures: {_f(means['random'], '.2f')} %. "
            "Student arch def: `" + json.dumps(st["arch_def"]) + "`", ""]
    return out, means


def reading(rank: dict[str, Any] | None, blocks: list[dict[str, Any]],
            means: Mapping[str, float]) -> list[str]:
    """A plain reading, derived from the figures (thresholds from the issue, fixed in advance)."""
    out = []
    end = (rank or {}).get("endpoints")
    if end:
        answer = {"success": "yes", "failure": "no", "inconclusive": "not shown either way"}
        out.append(f"- **Does the search beat choosing by size? {answer[end['verdict']]}** "
                   f"(PROTOCOL.md's rule: {end['verdict']}; {end['why']}"
                   + ("; underpowered: the single-seed noise ceiling is "
                      f"{_f(end['ceiling'], '.2f')} < 0.6" if not end["ceiling"] >= 0.6
                      else "") + ").")
        if end["matched"]:
            vs = end["matched"]
            out.append(f"- Searched student against {vs['archs']} random architectures of its "
                       f"size (±{MATCHED:.0%} params): {vs['student']:.2f} % against "
                       f"{vs['matched']:.2f} %, difference {_ci(vs)} points.")
    if rank is not None:
        k = rank["predictors"]["dnax"]["kendall"]
        nc = rank["noise_ceiling"]
        out.append(f"- Ranking: DNA's τ is {_f(k['value'], '.2f')}; the goal was ≥ 0.5 with the "
                   f"interval above 0. " + ("Its interval excludes 0. " if k["ci"][0] > 0 else
                                           "Its interval includes 0. ")
                   + ("The goal is met." if k["value"] >= 0.5 and k["ci"][0] > 0 else
                      "The goal is not met."))
        if nc:
            out.append(f"- Ground truth: two seeds of the same architectures agree with τ = "
                       f"{_f(nc['kendall'], '.2f')} "
                       + ("(≥ 0.6: the truth is trustworthy at this training length)."
                          if nc["kendall"] >= 0.6 else
                          "(< 0.6: seed noise limits any predictor's τ at this training "
                          "length)."))
        if "difference" in rank:
            d = rank["difference"]
            out.append("- Against SPOS: " + ("DNA ranks better; the paired interval of the "
                                              "difference is above 0." if d["ci"][0] > 0 else
                                              "the paired interval of τ(DNA) - τ(SPOS) includes "
                                              "0: no significant difference."))
        k2 = (rank["longer"] or {}).get("kendall")
        if k2:
            out.append(f"- With the block supernets trained {LONGER}x as long (same teacher, "
                       f"same truth): DNA's τ is {_f(k2['value'], '.2f')} "
                       f"[{_f(k2['ci'][0], '.2f')}, {_f(k2['ci'][1], '.2f')}]"
                       + ("; its interval excludes 0" if k2["ci"][0] > 0 else "")
                       + (f"; against SPOS the paired interval is "
                          f"[{_f(rank['difference_longer']['ci'][0], '.2f')}, "
                          f"{_f(rank['difference_longer']['ci'][1], '.2f')}]"
                          if "difference_longer" in rank else "") + ".")
        sizes = ", ".join(f"{k} {_f(rank['predictors'][k]['kendall']['value'], '.2f')}"
                          for k in ("params", "flops", "depth") if k in rank["predictors"])
        if "endpoints" not in rank:
            out.append(f"- Choosing by size alone: τ of {sizes}. This exploratory study cannot "
                       "say that the search beats choosing by size: see the paired differences "
                       "under the ranking table, and docs/reproduction/PROTOCOL.md for the "
                       "confirmatory test.")
    for label in dict.fromkeys(f["label"] for f in blocks):
        group = [f for f in blocks if f["label"] == label]
        taus = [f["rep"]["predictors"]["dnax"]["kendall"]["value"] for f in group]
        out.append(f"- Block level, supernets trained {label}: τ between the supernet's scores "
                   f"and stand-alone block losses is {', '.join(_f(v, '.2f') for v in taus)} "
                   f"over blocks {', '.join(str(f['block']) for f in group)}.")
    if means and "teacher" in means:
        out.append(f"- At the teacher's parameter count: student {_f(means['student'], '.2f')} %, "
                   f"teacher {_f(means['teacher'], '.2f')} %, random architectures "
                   f"{_f(means['random'], '.2f')} % (means over seeds).")
    return [*out, ""]


def render(exp: Experiment) -> str:
    """RESULTS.md, from the raw files alone."""
    raw = Raw(exp)
    s = raw.settings
    rank_lines, rank = ranking_section(raw)
    protocol = protocol_section(raw, rank, exp) if s.get("pilot_archs") else []
    block_lines, blocks = block_section(raw)
    budget_lines, means = budget_section(raw)
    lim = s["limit"]
    out = [
        f"# DNA on Fashion-MNIST: results (scale `{s['scale']}`)",
        "",
        f"Generated by `python docs/reproduction/reproduce.py table --scale {s['scale']}` from "
        f"the raw files in `{_rel(exp.root)}/`; do not edit by hand.",
        "",
        "## Reading",
        "",
        *reading(rank, blocks, means),
        *(["## Pre-registered endpoints (PROTOCOL.md)", "", *protocol] if protocol else []),
        "## Ranking: supernet rating against stand-alone accuracy",
        "",
        *rank_lines,
        "## The SPOS baseline",
        "",
        *spos_section(raw, rank),
        "## Block level: supernet scores against candidates trained alone",
        "",
        *block_lines,
        "## The searched student against random architectures",
        "",
        *budget_lines,
        "## Architectures",
        "",
        "| id | depths | params | FLOPs (M) | DNA rating | "
        + " | ".join(f"seed {k} (%)" for k in raw.seeds) + " | SPOS (%) |",
        "|---:|---|---:|---:|---:|" + "---:|" * (len(raw.seeds) + 1),
    ]
    for a in raw.archs:
        if a["group"] != "sample":
            continue
        acc = raw.top1("sample", a["id"])
        out.append(f"| {a['id']} | {'-'.join(map(str, a['depths']))} | {a['params']:,} | "
                   f"{a['flops'] / 1e6:.2f} | {a['rating']:.4f} | "
                   + " | ".join(_f(acc.get(k), ".2f") for k in raw.seeds)
                   + f" | {_f(raw.spos.get(a['id']), '.2f')} |")
    images = ("all images (54,000 train, 6,000 held out, 10,000 val)" if lim is None
              else f"at most {lim:,} images per split (train, held-out, val)")
    out += [
        "",
        "## Settings",
        "",
        f"- Fashion-MNIST at its native {s['resolution']} px, {images}, batch {s['batch_size']}",
        f"- teacher (the blocks' targets): {s['teacher_epochs']} epochs; block supernets: "
        f"{s['distill_epochs']} epochs; ranking: {s['rank_batches']} x "
        f"{s.get('rank_batch', 64)} held-out images",
        f"- every network trained from scratch: {raw.epochs} epochs, AdamW lr {LR}, "
        f"wd {WEIGHT_DECAY}, cosine, {WARMUP} warm-up epoch, label smoothing {LABEL_SMOOTHING}"
        + (f", EMA {s['ema_decay']} (evaluated)" if s.get("ema_decay") else ""),
        f"- SPOS supernet: {s['spos_epochs']} epochs, BatchNorm recalibrated on "
        f"{s['recal_batches']} train batches per path, scored on the "
        f"{s.get('spos_split', 'val')} images",
        f"- seeds: data split and samples {s['seed']}; training seeds "
        f"{', '.join(map(str, raw.seeds))}",
        "",
        "## Wall time",
        "",
        "| step | wall time | sessions | finished (UTC) |",
        "|---|---:|---:|---|",
    ]
    for name in (*STEPS[:-1], "all"):
        if name not in raw.steps:  # a step this scale has not run (cpu: pilot, matched)
            continue
        r = raw.steps[name]
        out.append(f"| {name} | {_hms(r.get('seconds', 0.0))} | {r.get('sessions', 0)} | "
                   f"{r.get('finished') or 'unfinished'} |")
    runs = raw.all_runs
    core = sum(float(r["seconds"]) for r in runs)
    out += ["", f"Stand-alone runs: {len(runs)}, {_hms(core)} of process time in all "
            "(they run in parallel worker processes, so the steps' wall times overlap)."]
    train = min(lim, TRAIN_IMAGES) if lim else TRAIN_IMAGES
    rates = [train * int(r["epochs"]) / float(r["train_seconds"]) for r in runs
             if float(r["train_seconds"]) > 0]
    wall = raw.steps.get("all", {}).get("seconds", 0.0)
    if rates:
        out.append(f"Training throughput: {float(np.median(rates)):,.0f} images/s per network "
                   f"(median over the runs, {train:,} train images per epoch)"
                   + (f"; {train * sum(int(r['epochs']) for r in runs) / wall:,.0f} images/s in "
                      "all over the whole run's wall time (a lower bound: it includes the "
                      "search)" if wall else "")
                   + ".")
    stages = raw.search.get("stages", {})
    if stages:
        out += ["", "dnax stages within `search`: " + ", ".join(
            f"{k} {_hms(v['seconds'])}" for k, v in stages.items() if not v.get("skipped"))]
    m = next((raw.steps[n]["machine"] for n in STEPS[:-1] if n in raw.steps), {})
    out += [
        "",
        "## Machine",
        "",
        f"- {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch threads "
        f"{m.get('torch_threads', '?')}, GPU: {m.get('gpu') or 'none'}",
        f"- Python {m.get('python', '?')}, torch {m.get('torch', '?')}, timm "
        f"{m.get('timm', '?')}, dnax {m.get('dnax', '?')}, {m.get('platform', '?')}",
        "",
    ]
    return "\n".join(out)


def step_table(exp: Experiment, out: Path) -> None:
    atomic_write_text(out, render(exp))
    say("table", f"wrote {out}")


# --- main -------------------------------------------------------------------------------------

RUNNERS = {"sample": step_sample, "search": step_search, "pilot": step_pilot,
           "matched": step_matched, "blocks": step_blocks,
           "longer": step_longer, "spos": step_spos, "standalone": step_standalone}


def spawn_workers(exp: Experiment, args: argparse.Namespace, count: int) -> list[Any]:
    """``count`` more processes that train stand-alone runs while this one runs the search."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "pool", "--scale", exp.scale_name,
           "--results", str(exp.root), "--seed", str(exp.seed), "--device", exp.device,
           "--threads", str(exp.threads or 0)]
    if exp.deadline is not None:
        cmd += ["--until", str(exp.deadline)]
    return [subprocess.Popen([*cmd, "--worker", str(k + 1)]) for k in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", metavar="STEP",
                   help=f"steps to run: {', '.join(STEPS)} (default: all, in order)")
    p.add_argument("--scale", choices=list(SCALES), default="cpu",
                   help="smoke: two minutes; cpu (default): under 2 hours on 2 CPU cores; gpu: "
                        "PROTOCOL.md's confirmatory run on one GPU (deadline 6 minutes)")
    p.add_argument("--results", type=Path, default=None,
                   help="results folder (default: docs/reproduction/results/<scale>)")
    p.add_argument("--table", type=Path, default=None,
                   help="table file (default: <results>/RESULTS.md for smoke, "
                        "docs/reproduction/RESULTS.md for cpu, <results>/RESULTS.md for gpu)")
    p.add_argument("--seed", type=int, default=None,
                   help="the data split's and the search's seed (default: 7 for gpu, "
                        "PROTOCOL.md's; else 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process "
                   "(default: 1 for smoke and cpu, the fastest on shared cores; torch's for gpu)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes training stand-alone networks (default: the scale's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="deadline from now: no new unit of work starts after it (default: the "
                        "scale's; 0 = none)")
    p.add_argument("--until", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [s for s in args.steps if s not in (*STEPS, "pool")]
    if unknown:
        p.error(f"unknown step {unknown[0]!r} (steps: {', '.join(STEPS)})")
    scale = SCALES[args.scale]
    results = args.results or HERE / "results" / args.scale
    threads = args.threads if args.threads is not None else 0 if args.scale == "gpu" else 1
    if threads:
        torch.set_num_threads(threads)
    minutes = scale.minutes if args.minutes is None else args.minutes or None
    deadline = args.until or (time.time() + 60 * minutes if minutes else None)
    seed = SEARCH_SEED.get(args.scale, 0) if args.seed is None else args.seed
    exp = Experiment(results, args.scale, seed, args.device, threads, deadline)
    exp.workers = args.workers
    if args.steps == ["pool"]:  # a worker process (spawned below)
        pool(exp, {"cut": False}, f"pool {args.worker}")
        return 0
    todo = [s for s in STEPS if s in (args.steps or STEPS)]
    exp.check_settings(write=todo != ["table"])
    workers: list[Any] = []
    t0, complete = time.perf_counter(), True
    try:
        for step in todo:
            if step == "table":
                default = HERE / "RESULTS.md" if args.scale == "cpu" else results / "RESULTS.md"
                step_table(exp, args.table or default)
                continue
            if exp.finished(step):
                say(step, "finished earlier, skipped")
                continue
            ensure_data()
            t1 = time.perf_counter()
            with exp.timed(step) as state:
                state["workers"] = workers
                RUNNERS[step](exp, state)
            complete &= not state["cut"]
            stopped = step == "pilot" and scale.pilot_archs and pilot_epochs(exp) is None
            say(step, "the pilot's rule stopped the run before the truth runs" if stopped else
                f"{'cut by the deadline' if state['cut'] else 'done'} "
                f"({time.perf_counter() - t1:.0f} s)")
            if stopped:
                break
            if step == "sample" and "standalone" in todo and not exp.finished("standalone"):
                workers += spawn_workers(exp, args, (args.workers or scale.workers) - 1)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if len(todo) > 1 and todo[:-1] == list(STEPS[:len(todo) - 1]):  # a whole run: its wall time
        steps = exp.steps()
        record = steps.get("all", {"seconds": 0.0, "sessions": 0})
        record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
        record["sessions"] += 1
        if complete and all(exp.finished(s) for s in STEPS[:-1]):
            record["finished"] = now()
        steps["all"] = record
        write_json(exp.files["steps.json"], steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
