"""Shared by the fault-injection tests: a tiny real pipeline (digits, a small EfficientNet teacher,
2 blocks, every stage), `dnax run` as a subprocess or in-process, and run-directory comparisons.

The session fixtures ``tiny_toml`` and ``tiny_reference`` (one uninterrupted run of the tiny
pipeline) come with the ``reliability`` pytest plugin.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

import dnax

#: every stage on CPU in a few seconds; deterministic so that runs can be compared bit for bit
TINY: dict[str, Any] = {
    "pipeline": {"name": "tiny", "resolution": 32, "seed": 0, "device": "cpu",
                 "deterministic": True},
    "data": {"plugin": "digits", "limit": 384},
    "teacher": {"plugin": "efficientnet", "stem_size": 8, "num_features": 64, "epochs": 2,
                "batch_size": 64,
                "arch_def": [["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"],
                             ["ir_r1_k3_s2_e3_c24"]]},
    "space": {"plugin": "mbconv", "preset": "custom", "kernels": [3, 5], "expansions": [3, 6],
              "stem_size": 8, "stem_stage": ["ds_r1_k3_s1_e1_c8"], "num_features": 64,
              "blocks": [{"cells": [{"depth": 1}, {"depth": 2}]},
                         {"cells": [{"depth": 1}, {"depth": 2}]}]},
    "trainer": {"plugin": "distill", "epochs": 3, "batch_size": 32, "checkpoint_every": 3,
                "log_every": 1, "lr": [0.005]},
    "evaluator": {"plugin": "prefix", "batches": 4, "batch_size": 32},
    "costs": [{"plugin": "params"}],
    # binding: the best network without a budget has 7,168 parameters, the cheapest 6,784
    "selector": {"plugin": "exact", "budgets": {"params": 7000.0}},
    "retrainer": {"plugin": "timm", "epochs": 3, "batch_size": 64, "eval_batch_size": 128},
}
STAGES = ("teacher", "train", "rank", "select", "retrain")
#: every folder a stage writes (the kernel's Stage.folders) and its stage record
FOLDERS = {"teacher": ("teacher",), "train": ("supernets",), "rank": ("rankings",),
           "select": ("selection", "selection.json"), "retrain": ("model",)}
#: single-threaded, no third-party plugins, plain output
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
       "DNAX_DISABLE_PLUGIN_AUTOLOAD": "1", "NO_COLOR": "1", "COLUMNS": "120",
       "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pipeline(**tables: Mapping[str, Any]) -> dict[str, Any]:
    """The tiny pipeline with some tables' keys overridden (``None`` drops a key)."""
    out = copy.deepcopy(TINY)
    for name, changes in tables.items():
        for key, value in changes.items():
            if value is None:
                out[name].pop(key, None)
            else:
                out[name][key] = value
    return out


def write_pipeline(path: Path, config: Mapping[str, Any] | None = None) -> Path:
    path.write_text(tomli_w.dumps(dict(config or TINY)))
    return path


# --- `dnax run` in a subprocess ---------------------------------------------------------------

def start(toml: Path, run_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m dnax run`` in its own process (stdout and stderr into run_dir's siblings)."""
    env = {**os.environ, **ENV}
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "dnax", "run", str(toml), "--run-dir",
                                 str(run_dir), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def run_to_end(toml: Path, run_dir: Path, *args: str, timeout: float = 300) -> str:
    """Run to completion; fail with the output when it does not exit 0."""
    proc = start(toml, run_dir, *args)
    rc = proc.wait(timeout)
    text = output(run_dir)
    assert rc == 0, f"dnax run exited {rc}:\n{text[-3000:]}"
    return text


def output(run_dir: Path) -> str:
    log = run_dir.parent / f"{run_dir.name}.log"
    return log.read_text(errors="replace") if log.exists() else ""


#: per stage, the file whose every (atomic) rewrite marks progress: the resume state, or for the
#: rank stage the first block's ranking table; the stage's start marker counts as rewrite 0
PROGRESS = {"teacher": "teacher/resume.pt", "train": "supernets/resume.pt",
            "rank": "rankings/block0.json", "retrain": "model/resume.pt"}


def kill_in(toml: Path, run_dir: Path, stage: str, writes: int, delay: float, *,
            timeout: float = 300) -> dict[str, Any]:
    """Start a run and SIGKILL it ``delay`` seconds after ``stage`` has started (``writes`` = 0)
    or after its progress file (:data:`PROGRESS`) has been written ``writes`` times.

    Returns where the kill landed: the stage in progress (the first without its record), the
    process's return code and the temp files left behind."""
    marker = run_dir / "stages" / f"{stage}.started.json"
    marker.unlink(missing_ok=True)
    watched = run_dir / PROGRESS[stage]
    proc = start(toml, run_dir)
    t0 = time.monotonic()
    try:
        seen, inode = -1, None
        while seen < writes:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before write {writes} of {watched.name} "
                                     f"in {stage}:\n{output(run_dir)[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{stage}: no write {writes} of {watched} in {timeout} s")
            ino = _inode(watched)
            if seen < 0 and marker.exists():
                seen, inode = 0, ino  # what an earlier run left is not progress
            elif seen >= 0 and ino is not None and ino != inode:
                inode, seen = ino, seen + 1  # every atomic replace is a new inode
            time.sleep(0.001)
        time.sleep(delay)
        finished = proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()
    if finished:
        raise AssertionError(f"the run finished before the kill:\n{output(run_dir)[-2000:]}")
    return {"landed": in_progress(run_dir), "rc": proc.returncode,
            "temp": sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.tmp"))}


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def in_progress(run_dir: Path) -> str | None:
    """The first stage without a record (None: all finished)."""
    return next((s for s in STAGES if not (run_dir / "stages" / f"{s}.json").exists()), None)


def keep_until(source: Path, target: Path, stage: str) -> None:
    """Copy the run directory ``source`` as it was when every stage before ``stage`` had
    finished (their records and folders, the resolved config)."""
    import shutil

    target.mkdir(parents=True)
    shutil.copy2(source / "config.toml", target / "config.toml")
    (target / "stages").mkdir()
    for s in STAGES[:STAGES.index(stage)]:
        for name in (f"{s}.json", f"{s}.started.json"):
            shutil.copy2(source / "stages" / name, target / "stages" / name)
        for folder in FOLDERS[s]:
            src = source / folder
            if src.is_dir():
                shutil.copytree(src, target / folder)
            elif src.exists():
                shutil.copy2(src, target / folder)


# --- comparing runs ---------------------------------------------------------------------------

#: keys whose values are wall-clock times (never compared)
TIMES = {"seconds", "train_seconds"}


def artefacts(run_dir: Path) -> dict[str, Any]:
    """Everything a run produced that must not depend on interruptions: every tensor of every
    safetensors file with its metadata, every JSON/CSV artefact, stage results; wall-clock
    times left out, temp files ignored."""
    import json

    import torch

    out: dict[str, Any] = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file() or path.name.endswith(".tmp") or rel.endswith(".pt"):
            continue  # resume states are scratch: compared through what they produce
        if path.suffix == ".safetensors":
            tensors, meta = dnax.load_safetensors(path)
            out[rel] = ({k: v.to(torch.float64) if v.is_floating_point() else v
                         for k, v in tensors.items()}, meta)
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            if rel == "report.json":
                data.pop("stages", None)  # which stages this process ran or reused, and when
            if rel.startswith("stages/"):
                data.pop("files", None)  # digests of files holding times; compared directly
            out[rel] = _no_times(data)
        elif path.suffix in (".csv", ".toml"):
            out[rel] = path.read_text()
    return out


def _no_times(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _no_times(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [_no_times(v) for v in x]
    return x


def differences(a: Mapping[str, Any], b: Mapping[str, Any], *, atol: float = 0.0
                ) -> list[str]:
    """What differs between two :func:`artefacts` (tensors within ``atol``)."""
    import torch

    found = [f"{k}: only in the first run" for k in a.keys() - b.keys()]
    found += [f"{k}: only in the second run" for k in b.keys() - a.keys()]
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key], b[key]
        if isinstance(x, tuple):
            (tx, mx), (ty, my) = x, y
            if mx != my:
                found.append(f"{key}: metadata differs")
            if tx.keys() != ty.keys():
                found.append(f"{key}: tensor names differ")
                continue
            for name in tx:
                if tx[name].shape != ty[name].shape:
                    found.append(f"{key}:{name}: shape differs")
                elif atol == 0 and not torch.equal(tx[name], ty[name]):
                    diff = (tx[name].double() - ty[name].double()).abs().max().item()
                    found.append(f"{key}:{name}: differs by {diff:.3g}")
                elif atol > 0 and not torch.allclose(tx[name].double(), ty[name].double(),
                                                     rtol=0, atol=atol, equal_nan=True):
                    found.append(f"{key}:{name}: differs beyond {atol}")
        elif x != y:
            found.append(f"{key}: differs")
    return found


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its content hash and modification time (ns)."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                               p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- `dnax` in-process (typer's CliRunner) ----------------------------------------------------

def cli(args: Sequence[str]) -> Any:
    """Invoke the ``dnax`` CLI in this process; returns typer's Result (exit_code, stdout,
    stderr)."""
    from typer.testing import CliRunner

    from dnax.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def ran(stdout: str) -> dict[str, str]:
    """Each stage's line of ``dnax run``'s output: ``run`` or ``reused``."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "✓" and parts[1] in STAGES:
            out[parts[1]] = "reused" if parts[2] == "reused" else "run"
    return out


# --- torch settings of in-process runs ---------------------------------------------------------

@contextlib.contextmanager
def torch_settings() -> Any:
    """One torch thread (as the subprocess runs), and afterwards the deterministic-algorithms
    flag that a ``deterministic = true`` pipeline sets process-wide put back."""
    import torch

    threads = torch.get_num_threads()
    flags = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
