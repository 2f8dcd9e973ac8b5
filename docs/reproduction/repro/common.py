"""What every step shares: the study's constants and scales, the results folder of one scale
(:class:`Experiment`: settings, raw files, each step's wall time, the deadline) and the helpers
that read and write its raw files (JSON, CSV rows appended under a lock, atomically)."""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

import dnax

#: the reproduction's folder (docs/reproduction): default results, RESULTS.md
HERE = Path(__file__).resolve().parents[1]


# --- the study: steps, space, teacher, recipe, scales -----------------------------------------

#: the steps, in the order a run takes them
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


def write_text(path: Path, text: str) -> None:
    """Write ``path`` atomically (a kill leaves the old file or the new one)."""
    with dnax.atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


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
    write_text(path, buf.getvalue())


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
                 threads: int = 0, deadline: float | None = None) -> None:
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
