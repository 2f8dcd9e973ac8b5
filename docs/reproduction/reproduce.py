"""A small-scale reproduction of DNA's claims on Fashion-MNIST, with dnax.

Steps, run in order; each finished step is skipped, so rerunning the command resumes:

  search      a 32 px EfficientNet teacher, its block supernets, every candidate ranked, the best
              student under the teacher's parameter count selected and retrained (dnax pipeline)
  sample      architectures drawn uniformly (seeded) from the space -> archs.json (DNA rating)
  standalone  each sampled architecture trained from scratch, one fixed recipe -> standalone.csv
  spos        SPOS baseline: one whole-network supernet, uniform single paths, cross-entropy;
              each sampled architecture's path after BN recalibration -> spos.csv
  table       the results table from the raw files only (rerunning it gives the same file)

    python docs/reproduction/reproduce.py                  # --scale cpu, every step
    python docs/reproduction/reproduce.py --scale smoke    # a minute: checks the machinery
    python docs/reproduction/reproduce.py table            # the table again
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import dnax
from dnax.rundir import atomic_write_text

HERE = Path(__file__).resolve().parent
STEPS = ("search", "sample", "standalone", "spos", "table")
RESOLUTION = 32

#: EfficientNet-B0's first five stages (widths 16..112), two layers per searched stage, strides
#: set for 32 px inputs (stem 16 px -> 8 -> 4 -> 4 -> 2); stage 0 is fixed, stages 1..4 are the
#: four searched blocks
TEACHER_ARCH = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r2_k3_s1_e6_c80_se0.25",),
    ("ir_r2_k5_s2_e6_c112_se0.25",),
)
STEM_SIZE = 16
NUM_FEATURES = 640
#: per block three cells of 1, 2 and 3 layers, each layer one of 6 ops: 258 candidates a block
CELL_DEPTHS = (1, 2, 3)
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
#: the teacher's training recipe, also the searched student's and the stand-alone runs'
LR, WEIGHT_DECAY, LABEL_SMOOTHING, WARMUP = 0.004, 0.05, 0.1, 1


@dataclass(frozen=True)
class Scale:
    """How much data and how many epochs each step gets."""

    limit: int | None  # images per split (train, heldout, val); None: all of them
    batch_size: int
    teacher_epochs: int  # the teacher and the searched student (the same recipe)
    distill_epochs: int
    rank_batches: int  # held-out batches of 64 every candidate is scored on
    archs: int
    standalone_epochs: int
    spos_epochs: int  # = cells per block x distill epochs: each op as many updates as in DNA
    recal_batches: int  # train batches that recalibrate BatchNorm per SPOS path


SCALES = {
    "smoke": Scale(limit=256, batch_size=32, teacher_epochs=1, distill_epochs=1, rank_batches=1,
                   archs=4, standalone_epochs=1, spos_epochs=3, recal_batches=2),
    "cpu": Scale(limit=10_000, batch_size=64, teacher_epochs=10, distill_epochs=5,
                 rank_batches=10, archs=20, standalone_epochs=3, spos_epochs=15,
                 recal_batches=10),
    "full": Scale(limit=None, batch_size=128, teacher_epochs=40, distill_epochs=20,
                  rank_batches=20, archs=30, standalone_epochs=20, spos_epochs=60,
                  recal_batches=20),
}


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
    """The results folder of one scale: settings, raw files, and each step's wall time."""

    RAW = ("settings.json", "steps.json", "search.json", "archs.json", "standalone.csv",
           "spos.csv")

    def __init__(self, root: Path, scale: str, seed: int = 0, device: str = "auto",
                 threads: int = 0):
        self.root, self.scale_name, self.seed = Path(root), scale, seed
        self.scale, self.device, self.threads = SCALES[scale], device, threads
        self.pipeline_toml = self.root / "pipeline.toml"
        self.run_dir = self.root / "run"
        self.files = {name: self.root / name for name in self.RAW}

    def check_settings(self, write: bool = True) -> None:
        """Refuse to mix the results of different settings in one folder; record them."""
        want = {"scale": self.scale_name, "seed": self.seed, **asdict(self.scale)}
        path = self.files["settings.json"]
        if path.exists():
            have = read_json(path)
            if have != want:
                diff = sorted(k for k in want if have.get(k) != want[k])
                raise SystemExit(f"{path}: made with other settings ({', '.join(diff)}); use "
                                 "another --results folder")
        elif write:
            write_json(path, want)

    def steps(self) -> dict[str, Any]:
        path = self.files["steps.json"]
        return read_json(path) if path.exists() else {}

    def finished(self, step: str) -> bool:
        return bool(self.steps().get(step, {}).get("finished"))

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add this session's wall time to the step's; mark it finished when the body returns."""
        t0, ok = time.perf_counter(), False
        record = self.steps().get(step, {"seconds": 0.0, "sessions": 0})
        record.setdefault("started", now())
        try:
            yield
            ok = True
        finally:
            steps = self.steps()
            record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
            record["sessions"] += 1
            record["machine"] = machine()
            if ok:
                record["finished"] = now()
            steps[step] = record
            write_json(self.files["steps.json"], steps)


def ensure_data() -> None:
    """Fashion-MNIST comes from the Debian package dataset-fashion-mnist: install it when it is
    missing and apt-get can (root), else stop with the command to run."""
    import shutil
    import subprocess

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


def loaded(exp: Experiment) -> tuple[dnax.Run, dnax.PipelineConfig, dnax.Plugins]:
    """The finished search run, its pipeline config and its plugins."""
    from dnax.runner import instantiate

    reg = registry("load")
    config = dnax.load_pipeline(exp.pipeline_toml, reg)
    return dnax.load_run(exp.run_dir), config, instantiate(config, reg)


def context(stage: str, config: dnax.PipelineConfig, plugins: dnax.Plugins, folder: Path
            ) -> dnax.StageContext:
    """A stage context outside the runner: the pipeline's data, teacher data config, device."""
    from dnax.runner import resolve_device

    device = resolve_device(config.pipeline.device, dnax.DistInfo())
    from dnax.context import QuietHooks

    # progress and log lines are dropped: these steps print one line per architecture instead
    return dnax.StageContext(stage, config, plugins, dnax.RunDir(folder), QuietHooks(), device)


def count_flops(model: nn.Module) -> int:
    """FLOPs of one 32 px image (torch's flop counter: 2 per multiply-add, as dnax counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, RESOLUTION, RESOLUTION))
    return int(counter.get_total_flops())


# --- step: search -----------------------------------------------------------------------------

def pipeline(exp: Experiment, teacher_params: int) -> dict[str, Any]:
    """The dnax pipeline of the search: teacher, space, distill, prefix, costs, exact, timm."""
    s = exp.scale
    data: dict[str, Any] = {"plugin": "fashion_mnist", "seed": exp.seed}
    if s.limit is not None:
        data["limit"] = s.limit
    return {
        "pipeline": {"name": f"fashion-mnist-{exp.scale_name}", "resolution": RESOLUTION,
                     "seed": exp.seed, "device": exp.device, "threads": exp.threads},
        "data": data,
        "teacher": {"plugin": "efficientnet", "arch_def": [list(a) for a in TEACHER_ARCH],
                    "stem_size": STEM_SIZE, "num_features": NUM_FEATURES,
                    "epochs": s.teacher_epochs, "batch_size": s.batch_size, "opt": "adamw",
                    "lr": LR, "weight_decay": WEIGHT_DECAY, "sched": "cosine",
                    "warmup_epochs": WARMUP, "label_smoothing": LABEL_SMOOTHING},
        "space": {"plugin": "mbconv", "preset": "custom", "kernels": list(KERNELS),
                  "expansions": list(EXPANSIONS), "stem_size": STEM_SIZE,
                  "stem_stage": list(TEACHER_ARCH[0]), "num_features": NUM_FEATURES,
                  "blocks": [{"cells": [{"depth": d} for d in CELL_DEPTHS]}
                             for _ in TEACHER_ARCH[1:]]},
        "trainer": {"plugin": "distill", "epochs": s.distill_epochs,
                    "batch_size": s.batch_size},
        "evaluator": {"plugin": "prefix", "batches": s.rank_batches, "batch_size": 64},
        "costs": [{"plugin": "params"}, {"plugin": "flops"}],
        "selector": {"plugin": "exact", "key": "nmae", "budgets": {"params": teacher_params}},
        # the teacher's recipe (AdamW, cosine, warm-up, label smoothing; no EMA, dropout or
        # drop-path, which the teacher does not get either): student and teacher differ only
        # in their architecture
        "retrainer": {"plugin": "timm", "recipe": "quick", "epochs": s.teacher_epochs,
                      "batch_size": s.batch_size, "lr": LR, "weight_decay": WEIGHT_DECAY,
                      "warmup_epochs": WARMUP, "label_smoothing": LABEL_SMOOTHING,
                      "drop_rate": 0.0, "drop_path_rate": 0.0, "ema_decay": 0.0},
    }


def teacher_model(num_classes: int = 10) -> nn.Module:
    from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher

    cfg = EfficientNetConfig(arch_def=TEACHER_ARCH, stem_size=STEM_SIZE,
                             num_features=NUM_FEATURES)
    return EfficientNetTeacher(cfg).build_model(num_classes)


def step_search(exp: Experiment) -> None:
    import tomli_w

    teacher = teacher_model()
    teacher_params = sum(p.numel() for p in teacher.parameters())
    atomic_write_text(exp.pipeline_toml, tomli_w.dumps(pipeline(exp, teacher_params)))
    say("search", f"teacher: {teacher_params:,} params; pipeline {exp.pipeline_toml}")
    run = dnax.run_pipeline(exp.pipeline_toml, exp.run_dir, registry=registry("search"))
    t, sel = run.results["teacher"], run.selection
    student = run.results["retrain"].metrics
    # accuracies in percent, as the teacher and the retrainer report them
    write_json(exp.files["search.json"], {
        "teacher": {"top1": t.metrics["top1"], "top5": t.metrics["top5"],
                    "params": t.metrics["params"], "flops": float(count_flops(teacher)),
                    "epochs": t.metrics.get("epochs"),
                    "train_seconds": t.metrics.get("train_seconds"), "arch_def": TEACHER_ARCH},
        "student": {"top1": student["top1"], "top5": student["top5"],
                    "params": student["params"], "flops": student["flops"],
                    "epochs": student["epochs"], "train_seconds": student["seconds"],
                    "arch_def": sel.arch_def, "candidates": sel.candidates,
                    "rating": sel.score, "predicted_costs": sel.costs},
        "budgets": sel.budgets,
        "key": run.results["rank"].key,
        "blocks": [{"index": b.index, "in_chs": b.in_chs, "out_chs": b.out_chs,
                    "stride": b.stride, "in_size": b.in_size, "out_size": b.out_size,
                    "candidates": run.results["rank"].blocks[b.index].num_candidates}
                   for b in t.blocks],
        "supernet_loss": {f"block{b.block}": b.loss for b in run.results["train"].blocks},
        "stages": run.report["stages"] if run.report else {},
    })
    say("search", f"teacher top-1 {t.metrics['top1']:.2f} %, student top-1 "
                  f"{student['top1']:.2f} % ({student['params']:,.0f} params)")


# --- step: sample -----------------------------------------------------------------------------

def step_sample(exp: Experiment) -> None:
    run, _, plugins = loaded(exp)
    blocks = run.results["teacher"].blocks
    key = run.results["rank"].key
    rankings, fixed = run.rankings(), run.fixed_costs
    rng = np.random.default_rng([exp.seed, 8])
    seen: set[tuple[int, ...]] = set()
    archs: list[dict[str, Any]] = []
    while len(archs) < exp.scale.archs:
        # uniform over the space's networks: per block one candidate, uniform over all of them
        choice = tuple(int(rng.integers(len(r.candidates))) for r in rankings)
        if choice in seen:
            continue
        seen.add(choice)
        picked = list(zip(rankings, choice, strict=True))
        chosen = [r.candidates[i] for r, i in picked]
        archs.append({
            "id": len(archs), "candidates": list(choice),
            "cells": [c.cell for c in chosen], "ops": [list(c.ops) for c in chosen],
            "arch_def": plugins.space.arch_def(blocks, chosen),
            "rating": float(sum(r.scores[key][i] for r, i in picked)),
            "block_scores": [float(r.scores[key][i]) for r, i in picked],
            **{m: float(fixed[m] + sum(r.costs[m][i] for r, i in picked)) for m in fixed},
        })
    write_json(exp.files["archs.json"], {"seed": exp.seed, "key": key, "fixed_costs": fixed,
                                         "model_kwargs": plugins.space.model_kwargs(),
                                         "archs": archs})
    say("sample", f"{len(archs)} architectures, {min(a['params'] for a in archs):,.0f} to "
                  f"{max(a['params'] for a in archs):,.0f} params")


# --- step: standalone -------------------------------------------------------------------------

STANDALONE = ("id", "top1", "top5", "params", "flops", "epochs", "train_seconds", "seconds")


def step_standalone(exp: Experiment) -> None:
    import attrs

    from dnax.plugins.retrainers.export import load_meta
    from dnax.plugins.retrainers.timm_retrainer import TimmRetrainer

    _, config, plugins = loaded(exp)
    spec = read_json(exp.files["archs.json"])
    # ONE recipe for all: the searched student's (= the teacher's), standalone_epochs long
    recipe = attrs.evolve(config.section("retrainer").config,
                          epochs=exp.scale.standalone_epochs, onnx=False)
    rows = read_csv(exp.files["standalone.csv"])
    done = {int(r["id"]) for r in rows}
    for arch in spec["archs"]:
        if arch["id"] in done:
            continue
        t0 = time.perf_counter()
        folder = exp.root / "standalone" / f"arch{arch['id']:03d}"
        if (folder / "model" / "model.json").exists():  # trained, killed before its row
            m = load_meta(folder / "model")["metrics"]
        else:
            ctx = context("standalone", config, plugins, folder)
            selection = dnax.Selection(tuple(arch["candidates"]), arch["rating"], {}, {},
                                       tuple(tuple(s) for s in arch["arch_def"]),
                                       spec["model_kwargs"])
            m = TimmRetrainer(recipe).retrain(ctx, selection).metrics
        if m["params"] != arch["params"]:
            raise SystemExit(f"arch {arch['id']}: the params cost model says "
                             f"{arch['params']:.0f}, timm built {m['params']:.0f}")
        rows.append({"id": arch["id"], "top1": f"{m['top1']:.4f}", "top5": f"{m['top5']:.4f}",
                     "params": int(m["params"]), "flops": int(m["flops"]),
                     "epochs": int(m["epochs"]), "train_seconds": f"{m['seconds']:.1f}",
                     "seconds": f"{time.perf_counter() - t0:.1f}"})
        write_csv(exp.files["standalone.csv"], rows, STANDALONE)
        say("standalone", f"arch {len(rows)}/{len(spec['archs'])} (id {arch['id']}): top-1 "
                          f"{m['top1']:.2f} %, {m['params']:,.0f} params "
                          f"({time.perf_counter() - t0:.0f} s)")


# --- step: spos -------------------------------------------------------------------------------

SubnetPath = Sequence[tuple[int, Sequence[int]]]  # per block: (cell, op per layer)


class SPOSNet(nn.Module):
    """SPOS's whole-network supernet: the searched network's stem, fixed stage(s) and head
    around every block's supernet of the mbconv space (its cells, ops and adapters)."""

    def __init__(self, space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec],
                 num_classes: int):
        from dnax.plugins.retrainers.export import build_model

        super().__init__()
        first = [space.candidates(b)[0] for b in blocks]
        net = build_model(space.arch_def(blocks, first), num_classes, space.model_kwargs())
        net.blocks = net.blocks[: len(net.blocks) - len(blocks)]  # the fixed stage(s)
        self.net = net
        self.supernets = nn.ModuleList(space.build_supernet(b) for b in blocks)

    def forward(self, x: torch.Tensor, path: SubnetPath) -> torch.Tensor:
        net = self.net
        x = net.blocks(net.bn1(net.conv_stem(x)))
        for supernet, (cell, ops) in zip(self.supernets, path, strict=True):
            x = supernet(x, cell, ops)
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


SPOS = ("id", "top1", "recal_batches")
SPOS_STATE, SPOS_WEIGHTS = "resume.pt", "supernet.safetensors"


def train_spos(exp: Experiment, ctx: dnax.StageContext, model: SPOSNet,
               blocks: Sequence[dnax.BlockSpec]) -> None:
    """Cross-entropy, one uniform path per step, the stand-alone recipe's optimizer and
    schedule; resumable per epoch."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    s, rd, device, space = exp.scale, ctx.run_dir, ctx.device, ctx.plugins.space
    recipe = ctx.config.section("retrainer").config
    train = ctx.loader("train", s.batch_size, shuffle=True, augment=True, drop_last=True)
    steps = len(train)
    opt = create_optimizer_v2(model, "adamw", lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=s.spos_epochs,
                                   warmup_epochs=recipe.warmup_epochs, warmup_lr=recipe.lr * 1e-3,
                                   min_lr=recipe.lr * 1e-3, step_on_epochs=False,
                                   updates_per_epoch=steps)
    start, seconds = 0, 0.0
    state = rd.load_state(SPOS_STATE)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, seconds = state["epoch"], state["seconds"]
        say("spos", f"resuming after epoch {start}/{s.spos_epochs}")
    for epoch in range(start, s.spos_epochs):
        t0 = time.perf_counter()
        seed = exp.seed * 100_003 + epoch  # paths, order, augmentation: the same after a resume
        torch.manual_seed(seed)
        train.generator.manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        model.train()
        total = 0.0
        for i, (x, y) in enumerate(train):
            logits = model(x.to(device), sample_path(space, blocks, g))
            loss = F.cross_entropy(logits, y.to(device), label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + i + 1)
            total += loss.item()
        sched.step(epoch + 1)
        if not np.isfinite(total):
            raise SystemExit(f"spos: loss is {total} in epoch {epoch + 1}")
        seconds += time.perf_counter() - t0
        rd.save_state(SPOS_STATE, {"epoch": epoch + 1, "seconds": seconds,
                                   "model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
        say("spos", f"epoch {epoch + 1}/{s.spos_epochs}: loss {total / steps:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    rd.save_tensors(SPOS_WEIGHTS, model.state_dict(), kind="spos-supernet",
                    metadata={"epochs": str(s.spos_epochs), "seconds": f"{seconds:.1f}"})
    rd.path(SPOS_STATE).unlink(missing_ok=True)


def step_spos(exp: Experiment) -> None:
    run, config, plugins = loaded(exp)
    blocks = run.results["teacher"].blocks
    ctx = context("spos", config, plugins, exp.root / "spos")
    torch.manual_seed(exp.seed)
    model = SPOSNet(plugins.space, blocks, plugins.data.num_classes).to(ctx.device)
    if not ctx.run_dir.exists(SPOS_WEIGHTS):
        train_spos(exp, ctx, model, blocks)
    weights, _ = ctx.run_dir.load_tensors(SPOS_WEIGHTS, kind="spos-supernet")
    spec = read_json(exp.files["archs.json"])
    rows = read_csv(exp.files["spos.csv"])
    done = {int(r["id"]) for r in rows}
    loader = ctx.loader("train", exp.scale.batch_size, shuffle=True)
    recal = [x for _, (x, _) in zip(range(exp.scale.recal_batches), loader, strict=False)]
    val = ctx.loader("val", 256)
    for arch in spec["archs"]:
        if arch["id"] in done:
            continue
        model.load_state_dict(weights)
        path = list(zip(arch["cells"], arch["ops"], strict=True))
        top1 = recalibrated_top1(model, path, recal, val, ctx.device)
        rows.append({"id": arch["id"], "top1": f"{top1:.4f}", "recal_batches": len(recal)})
        write_csv(exp.files["spos.csv"], rows, SPOS)
        say("spos", f"arch {len(rows)}/{len(spec['archs'])} (id {arch['id']}): "
                    f"top-1 {top1:.2f} %")


# --- step: table ------------------------------------------------------------------------------

def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    a = np.asarray(x, dtype=np.float64)
    ranks = np.empty(len(a))
    ranks[np.argsort(a, kind="mergesort")] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the (average) ranks; NaN when undefined."""
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable accounted for); NaN when undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(a), k=1)
    sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    den = np.sqrt(float(np.count_nonzero(sa)) * float(np.count_nonzero(sb)))
    return float((sa * sb).sum() / den) if den > 0 else float("nan")


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(HERE.parent.parent).as_posix()
    except ValueError:
        return path.name


def render(exp: Experiment) -> str:
    """The results table, from the raw files alone."""
    for name in Experiment.RAW:
        if not exp.files[name].exists():
            raise SystemExit(f"{exp.files[name]}: missing; run the steps before `table`")
    s = read_json(exp.files["settings.json"])
    steps = read_json(exp.files["steps.json"])
    search = read_json(exp.files["search.json"])
    spec = read_json(exp.files["archs.json"])
    alone = {int(r["id"]): r for r in read_csv(exp.files["standalone.csv"])}
    spos = {int(r["id"]): r for r in read_csv(exp.files["spos.csv"])}
    archs = [a for a in spec["archs"] if a["id"] in alone]
    acc = {a["id"]: float(alone[a["id"]]["top1"]) for a in archs}
    with_spos = [a for a in archs if a["id"] in spos]
    proxies = [
        ("DNA rating (summed block nmae, lower = better)", archs, lambda a: -a["rating"]),
        ("SPOS supernet top-1 (one supernet, cross-entropy, uniform single path)",
         with_spos, lambda a: float(spos[a["id"]]["top1"])),
        ("params (more = better; a trivial baseline)", archs, lambda a: a["params"]),
        ("FLOPs (more = better; a trivial baseline)", archs, lambda a: a["flops"]),
    ]
    t, st = search["teacher"], search["student"]
    lim = s["limit"]
    images = ("all images (54,000 train, 6,000 held out, 10,000 val)" if lim is None
              else f"at most {lim:,} images per split (train, held-out, val)")
    out = [
        f"# DNA on Fashion-MNIST: results (scale `{s['scale']}`)",
        "",
        f"Generated by `python docs/reproduction/reproduce.py table --scale {s['scale']}` from "
        f"the raw files in `{_rel(exp.root)}/`; do not edit by hand.",
        "",
        "## Ranking: supernet vs stand-alone accuracy",
        "",
        f"{len(archs)} architectures drawn uniformly from the search space (seed "
        f"{spec['seed']}), each trained from scratch with one recipe for "
        f"{_n(s['standalone_epochs'], 'epoch')}; stand-alone accuracy = val top-1 on Fashion-MNIST "
        "t10k. Rank correlation of each predictor with it (1 = same order, 0 = unrelated, "
        "-1 = reversed):",
        "",
        "| predictor | n | Kendall tau | Spearman rho |",
        "|---|---:|---:|---:|",
    ]
    for name, subset, value in proxies:
        x, y = [value(a) for a in subset], [acc[a["id"]] for a in subset]
        out.append(f"| {name} | {len(x)} | {_f(kendall(x, y))} | {_f(spearman(x, y))} |")
    ratings = [a["rating"] for a in spec["archs"]]
    out += [
        "",
        "## Searched student vs teacher",
        "",
        f"The student is the network with the lowest summed block `{search['key']}` whose "
        f"parameter count is at most the teacher's ({search['budgets'].get('params', 0):,.0f})"
        f"; its DNA rating is {st['rating']:.4f} (sampled architectures: "
        f"{min(ratings):.4f} to {max(ratings):.4f}). Student and teacher are trained from "
        f"scratch with the same recipe for {_n(s['teacher_epochs'], 'epoch')}.",
        "",
        "| network | val top-1 (%) | params | FLOPs (M) |",
        "|---|---:|---:|---:|",
        f"| teacher | {_f(t['top1'], '.2f')} | {t['params']:,.0f} | {t['flops'] / 1e6:.2f} |",
        f"| searched student | {_f(st['top1'], '.2f')} | {st['params']:,.0f} | "
        f"{st['flops'] / 1e6:.2f} |",
        "",
        "Student arch def: `" + json.dumps(st["arch_def"]) + "`",
        "",
        "## Sampled architectures",
        "",
        "| id | params | FLOPs (M) | DNA rating | stand-alone top-1 (%) | SPOS top-1 (%) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a in archs:
        sp = float(spos[a["id"]]["top1"]) if a["id"] in spos else None
        out.append(f"| {a['id']} | {a['params']:,.0f} | {a['flops'] / 1e6:.2f} | "
                   f"{a['rating']:.4f} | {acc[a['id']]:.2f} | {_f(sp, '.2f')} |")
    out += [
        "",
        "## Settings",
        "",
        f"- seed {s['seed']} everywhere (data split and subsets, teacher, supernet paths, "
        "retraining, stand-alone runs, SPOS); architectures drawn with numpy "
        f"`default_rng([{s['seed']}, 8])`",
        f"- {images}, 32 px, batch {s['batch_size']}",
        f"- teacher and searched student: {_n(s['teacher_epochs'], 'epoch')}; block "
        f"supernets: {_n(s['distill_epochs'], 'epoch')}; ranking: {s['rank_batches']} x 64 "
        "held-out images",
        f"- stand-alone runs: {_n(s['standalone_epochs'], 'epoch')} each; SPOS supernet: "
        f"{_n(s['spos_epochs'], 'epoch')} (DNA trains one path of every cell of a block per step, "
        "SPOS one path of one cell: with as many epochs times cells per block, every op gets as "
        f"many updates in both), BatchNorm recalibrated on {s['recal_batches']} train batches "
        "per path",
        "",
        "## Wall time",
        "",
        "| step | wall time | sessions | finished (UTC) |",
        "|---|---:|---:|---|",
    ]
    total = 0.0
    for name in STEPS[:-1]:
        r = steps.get(name, {})
        total += r.get("seconds", 0.0)
        out.append(f"| {name} | {_hms(r.get('seconds', 0.0))} | {r.get('sessions', 0)} | "
                   f"{r.get('finished') or 'unfinished'} |")
    out.append(f"| all | {_hms(total)} | | |")
    stages = search.get("stages", {})
    if stages:
        out += ["", "dnax stages within `search`: " + ", ".join(
            f"{k} {_hms(v['seconds'])}" for k, v in stages.items() if not v.get("skipped"))]
    m = next((steps[n]["machine"] for n in STEPS[:-1] if n in steps), {})
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

RUNNERS = {"search": step_search, "sample": step_sample, "standalone": step_standalone,
           "spos": step_spos}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", metavar="STEP",
                   help=f"steps to run: {', '.join(STEPS)} (default: all, in order)")
    p.add_argument("--scale", choices=list(SCALES), default="cpu",
                   help="smoke: a minute; cpu (default): about an hour on 2 CPU cores; full: GPU")
    p.add_argument("--results", type=Path, default=None,
                   help="results folder (default: docs/reproduction/results/<scale>)")
    p.add_argument("--table", type=Path, default=None,
                   help="table file (default: <results>/RESULTS.md for smoke, "
                        "docs/reproduction/RESULTS.md otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 "
                   "for smoke and cpu, which is fastest on shared cores; torch's for full)")
    args = p.parse_args(argv)
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        p.error(f"unknown step {unknown[0]!r} (steps: {', '.join(STEPS)})")
    results = args.results or HERE / "results" / args.scale
    threads = args.threads if args.threads is not None else 0 if args.scale == "full" else 1
    if threads:
        torch.set_num_threads(threads)
    exp = Experiment(results, args.scale, args.seed, args.device, threads)
    todo = [s for s in STEPS if s in (args.steps or STEPS)]
    exp.check_settings(write=todo != ["table"])
    for step in todo:
        if step == "table":
            table = args.table or (results / "RESULTS.md" if args.scale == "smoke"
                                   else HERE / "RESULTS.md")
            step_table(exp, table)
        elif exp.finished(step):
            say(step, "finished earlier, skipped")
        else:
            ensure_data()
            t0 = time.perf_counter()
            with exp.timed(step):
                RUNNERS[step](exp)
            say(step, f"done ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
