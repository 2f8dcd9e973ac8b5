"""Faults during a run: SIGKILL of ``python -m dnax run`` at seeded random points of each stage, a
kill inside an atomic write, and a NaN loss; the re-run must end with exactly the artefacts of an
uninterrupted run (deterministic CPU settings, one thread: tolerance 0, bit for bit)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import faultkit
import pytest
import torch

import dnax
from dnax.plugins.retrainers import timm_retrainer
from dnax.plugins.trainers import distill

pytestmark = pytest.mark.slow  # every test starts and kills dnax processes

pytest_plugins = ["reliability"]

EXACT = "artefacts bit-identical to an uninterrupted run"


@pytest.fixture(autouse=True)
def _torch():
    with faultkit.torch_settings():
        yield


def landed(run_dir, stage: str) -> str:
    """Where a stage stood when it was killed, from what it left on disk."""
    rd = dnax.RunDir(run_dir)
    if stage in ("teacher", "train", "retrain"):
        rel = {"teacher": "teacher/resume.pt", "train": distill.RESUME,
               "retrain": timm_retrainer.RESUME}[stage]
        state = rd.load_state(rel)
        if state is None:
            return "before its first checkpoint"
        if stage == "train" and state["step"]:
            return f"after the checkpoint at step {state['step']} of epoch {state['epoch'] + 1}"
        return f"after the checkpoint of epoch {state['epoch']}"
    if stage == "rank":
        done = sorted(p.stem for p in rd.path("rankings").glob("block*.safetensors"))
        return f"with {', '.join(done)} stored" if done else "before any block was stored"
    return "mid-stage"


# --- SIGKILL at random points ---------------------------------------------------------------


#: (stage, seed) of each kill; the seed picks after which progress write and how long after
CASES = [("teacher", 2), ("train", 1), ("train", 3), ("rank", 1), ("rank", 2), ("retrain", 1),
         ("retrain", 2)]
#: the last progress write (faultkit.PROGRESS) a kill may follow: at least a third of the
#: stage is still to run after it, while a kill comes at most a tenth of the stage later
LAST_WRITE = {"teacher": 1, "train": 8, "rank": 1, "retrain": 1}


def kill_point(rng: random.Random, stage: str, seconds: dict[str, float]) -> tuple[int, float]:
    """After which progress write, and how many seconds after it."""
    return rng.randint(0, LAST_WRITE[stage]), rng.uniform(0.0, 0.1) * seconds[stage]


def describe(stage: str, seed: int | None, writes: int, delay: float, where: str) -> str:
    after = "its start" if writes == 0 else f"progress write {writes}"
    return (f"SIGKILL during {stage}{f' (seed {seed})' if seed is not None else ''}: "
            f"{delay * 1e3:.0f} ms after {after}, {where}")


def kill_and_rerun(ref, run_dir, stage: str, seed: int) -> dict:
    """The run directory as it was when ``stage`` began, `dnax run` SIGKILLed at a seeded point
    of that stage, then run to the end."""
    faultkit.keep_until(ref.run_dir, run_dir, stage)  # every stage before it finished
    writes, delay = kill_point(random.Random(f"{stage}/{seed}"), stage, ref.seconds)
    kill = faultkit.kill_in(ref.toml, run_dir, stage, writes, delay)
    where = landed(run_dir, stage)
    log = faultkit.run_to_end(ref.toml, run_dir)
    resumed = {"teacher": "teacher: resuming after", "train": "distill: resuming after",
               "retrain": "resuming retraining after"}
    problems = [f"killed in {kill['landed']}"] if kill["landed"] != stage else []
    if "after the checkpoint" in where and resumed[stage] not in log:
        problems.append("did not resume from its checkpoint")
    problems += faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    how = ("resumed from the checkpoint" if "after the checkpoint" in where
           else "ran the stage again")
    return {"fault": describe(stage, seed, writes, delay, where), "problems": problems,
            "outcome": f"re-run {how}; {EXACT}"}


def kill_three_times(ref, run_dir) -> dict:
    """From an empty run directory: killed in the teacher stage, again in supernet training,
    again in retraining, then run to the end."""
    rng = random.Random(7)
    where, problems = [], []
    for stage in ("teacher", "train", "retrain"):
        writes, delay = kill_point(rng, stage, ref.seconds)
        kill = faultkit.kill_in(ref.toml, run_dir, stage, writes, delay)
        if kill["landed"] != stage:
            problems.append(f"killed in {kill['landed']}, not {stage}")
        where.append(describe(stage, None, writes, delay, landed(run_dir, stage))
                     .removeprefix("SIGKILL during "))
    faultkit.run_to_end(ref.toml, run_dir)
    problems += faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    return {"fault": "SIGKILL three times in one run from scratch (" + "; ".join(where) + ")",
            "problems": problems, "outcome": f"each re-run resumed; {EXACT}"}


def test_sigkill_at_random_points_then_rerun_ends_bit_identical(tiny_reference, tmp_path,
                                                                 fault):
    """Every case of CASES, and one run killed three times; two at a time (one thread each)."""
    ref = tiny_reference
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(kill_three_times, ref, tmp_path / "three")]
        futures += [pool.submit(kill_and_rerun, ref, tmp_path / f"{stage}{seed}", stage, seed)
                    for stage, seed in CASES]
    fault.note("kill", "Artefacts compared: every tensor and metadata of every safetensors "
               "file (supernets, rankings, costs, teacher, model), every JSON and CSV artefact "
               "(selection, stage results, losses.csv, model.json), config.toml; wall-clock "
               "times and resume states (*.pt, scratch) left out. Tolerance: 0 (bit-identical).")
    fault.note("kill", "A progress write is an atomic rewrite of the stage's resume state "
               "(for rank: of rankings/block0.json); write 0 is the stage's start.")
    fault.note("kill", "Found by these tests and fixed (plugins/trainers/distill.py): supernet "
               "training drew its data augmentation from whatever global RNG state the earlier "
               "stages of the same process left, so a run resumed after the teacher stage "
               "trained other supernets; it now seeds the global RNGs at the stage's start.")
    problems = []
    for future in futures:
        case = future.result()
        fault.record(category="kill", fault=case["fault"], outcome=case["outcome"]
                     if not case["problems"] else "; ".join(case["problems"][:3]))
        problems += [f"{case['fault']}: {p}" for p in case["problems"]]
    assert not problems, "\n".join(problems)


def test_select_stage_killed_midway_is_redone_bit_identical(tiny_reference, tmp_path, fault):
    """The select stage takes milliseconds, too short to hit with a timed SIGKILL; what a kill
    after its costs were stored leaves is made here instead: its start record, the costs file,
    no selection, a stray temp file. The re-run redoes the stage from its start."""
    ref = tiny_reference
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "select")
    (run_dir / "selection").mkdir()
    shutil.copy2(ref.run_dir / "selection" / "costs.safetensors",
                 run_dir / "selection" / "costs.safetensors")
    shutil.copy2(ref.run_dir / "stages" / "select.started.json",
                 run_dir / "stages" / "select.started.json")
    (run_dir / "selection" / ".top.json.1234.tmp").write_text("{")
    faultkit.run_to_end(ref.toml, run_dir)
    diffs = faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    fault.record(category="kill", fault="select stage killed after storing its costs (its "
                 "start record, costs.safetensors and a stray temp file left; no selection)",
                 outcome="re-run redid the stage; " + (EXACT if not diffs else "differs"))
    assert not diffs, diffs[:3]
    assert not list((run_dir / "selection").glob("*.tmp"))


# --- a kill inside an atomic write ----------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from dnax.rundir import atomic_write

dest, blobs = Path(sys.argv[1]), [Path(p).read_bytes() for p in sys.argv[2:]]
for i in range(1000):
    with atomic_write(dest) as f:
        print("open", i, flush=True)  # the temp file exists from here on
        f.write(blobs[i % len(blobs)])
    print("done", i, flush=True)
"""


def test_sigkill_inside_an_atomic_write_leaves_no_truncated_file(tmp_path, fault):
    """A child writes a 24 MB supernet file again and again (the bytes RunDir.save_tensors
    makes, through its atomic_write) and is SIGKILLed mid-write; every time the destination is
    absent or one complete version, and the temp files left behind are never read."""
    rd = dnax.RunDir(tmp_path / "blobs")
    versions = []
    for v in (1, 2):
        rel = f"v{v}.safetensors"
        rd.save_tensors(rel, {"w": torch.full((6 * 2**20,), float(v))}, kind="supernet",
                        metadata={"version": str(v)})
        versions.append(rd.path(rel))
    contents = {p.read_bytes() for p in versions}
    rng = random.Random(0)
    kills, mid_write, absent, leftovers = 12, 0, 0, 0
    for k in range(kills):
        run_dir = dnax.RunDir(tmp_path / f"run{k}")
        dest = run_dir.path("supernets", "block0.safetensors")
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), *map(str, versions)],
                                stdout=subprocess.PIPE, text=True)
        target = rng.randrange(3)  # the first write (nothing there yet) or a later one
        for line in proc.stdout:
            if line.startswith("open") and int(line.split()[1]) == target:
                break
        else:
            raise AssertionError("the writer ended early")
        time.sleep(rng.uniform(0.0, 0.03))
        proc.kill()
        proc.wait()
        temps = list(dest.parent.glob(".block0.safetensors.*.tmp"))
        mid_write += bool(temps)
        leftovers += len(temps)
        if not dest.exists():
            absent += 1
            continue
        assert dest.read_bytes() in contents, f"kill {k}: the destination is not a whole version"
        tensors, meta = run_dir.load_tensors("supernets/block0.safetensors", kind="supernet")
        assert tensors["w"].eq(float(meta["version"])).all()
    # the next write and read ignore the leftovers (nothing lists the folder)
    run_dir.save_tensors("supernets/block0.safetensors", {"w": torch.zeros(3)}, kind="supernet")
    assert run_dir.load_tensors("supernets/block0.safetensors", kind="supernet")[0]["w"].eq(0).all()
    fault.record(category="write", fault="SIGKILL inside atomic_write of a 24 MB safetensors "
                 f"({mid_write} of {kills} kills left a temp file: they landed mid-write)",
                 outcome=f"destination absent ({absent}: killed in the first write) or one "
                 f"complete, loadable version ({kills - absent}); {leftovers} temp files left, "
                 "never read, not cleaned", cases=kills)
    fault.note("write", "Temp files (.NAME.XXXX.tmp) of killed writes stay in the folder until "
               "the stage's folder is cleared; no code reads them.")
    assert mid_write >= 3  # the kills did land inside the write


def test_kill_between_the_last_resume_state_and_losses_csv(tiny_reference, tmp_path, fault,
                                                           monkeypatch):
    """The narrowest window of the trainer: resume.pt of the final epoch written, losses.csv
    not yet; the re-run finds nothing left to train and must still complete losses.csv."""
    ref = tiny_reference
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "train")
    write_csv = distill._write_csv
    total = 3 * 12  # epochs x steps

    def killed(run_dir, header, rows):
        if len(rows) == total:
            raise KeyboardInterrupt("killed")
        write_csv(run_dir, header, rows)

    monkeypatch.setattr(distill, "_write_csv", killed)
    with pytest.raises(KeyboardInterrupt):
        dnax.run_pipeline(ref.toml, run_dir, until="train")
    monkeypatch.setattr(distill, "_write_csv", write_csv)
    dnax.run_pipeline(ref.toml, run_dir, until="train")
    csv = (run_dir / distill.LOSSES).read_text()
    ok = csv == (ref.run_dir / distill.LOSSES).read_text()
    fault.note("kill", "Found and fixed (plugins/trainers/distill.py): a kill between the "
               "final resume state and losses.csv left losses.csv short; a resumed stage now "
               "rewrites it.")
    fault.record(category="kill", fault="kill between the final resume state and losses.csv "
                 "(in-process)", outcome="re-run rewrote losses.csv; " + EXACT if ok else
                 f"losses.csv left with {csv.count(chr(10)) - 1} of {total} rows")
    assert ok
    diffs = faultkit.differences(
        {k: v for k, v in ref.artefacts.items() if k.startswith("supernets/")},
        {k: v for k, v in faultkit.artefacts(run_dir).items() if k.startswith("supernets/")})
    assert not diffs


# --- divergence ---------------------------------------------------------------------------


def hide(lines: list[str], run_dir) -> str:
    """The last line, the run directory written RUN_DIR."""
    return lines[-1].replace(str(run_dir), "RUN_DIR") if lines else ""


def poison(monkeypatch, after: int) -> None:
    """The digits train split turns NaN after ``after`` images have been read from it."""
    from dnax.plugins.data.digits import Digits

    make = Digits.dataset

    class Poisoned(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner, self.served = inner, 0

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            x, y = self.inner[i]
            self.served += 1
            return (x * float("nan") if self.served > after else x), y

        def to(self, device):  # in memory, as the digits it wraps: the same batches
            self.inner.to(device)
            return self

        def batch(self, indices):
            x, y = self.inner.batch(indices)
            first = max(0, after - self.served)  # images after the first `after` turn NaN
            self.served += len(indices)
            x[first:] = float("nan")
            return x, y

    def dataset(self, split, data_config, *, augment=False):
        inner = make(self, split, data_config, augment=augment)
        return Poisoned(inner) if split == "train" else inner

    monkeypatch.setattr(Digits, "dataset", dataset)


def test_nan_in_supernet_training_stops_naming_block_and_step(tiny_reference, tmp_path, fault,
                                                              monkeypatch):
    ref = tiny_reference
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "train")
    with monkeypatch.context() as m:
        poison(m, after=4 * 32)  # NaN images from step 5 (batch 32)
        res = faultkit.cli(["run", ref.toml, "--run-dir", run_dir])
    lines = res.stderr.strip().splitlines()
    state = dnax.RunDir(run_dir).load_state(distill.RESUME)
    finite = all(v.isfinite().all() for sd in state["supernets"] for v in sd.values()
                 if v.is_floating_point())
    again = faultkit.cli(["run", ref.toml, "--run-dir", run_dir])
    diffs = faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    fault.record(category="divergence", fault="NaN loss in supernet training at epoch 1 step 5",
                 outcome=f"exit {res.exit_code}: {hide(lines, run_dir)!r}; checkpoint of step "
                 f"{state['step']} kept{'' if finite else ' (NOT finite)'}; re-run resumed from "
                 f"it; {EXACT if not diffs else 'differs'}")
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert re.fullmatch(r"error: block0\.cell0: loss is nan at epoch 1 step 5; the last good "
                        r"checkpoint is kept \(.*supernets/resume\.pt\)", lines[0])
    assert "Traceback" not in res.output
    assert (state["epoch"], state["step"]) == (0, 3) and finite  # checkpoint_every = 3
    assert again.exit_code == 0, again.output
    assert "distill: resuming after 0 epochs and 3 steps" in again.stdout
    assert not diffs


def test_nan_in_retraining_stops_naming_epoch_and_step(tiny_reference, tmp_path, fault,
                                                       monkeypatch):
    ref = tiny_reference
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "retrain")
    with monkeypatch.context() as m:
        poison(m, after=(6 + 2) * 64)  # 6 steps of 64 per epoch: NaN from epoch 2 step 3
        res = faultkit.cli(["run", ref.toml, "--run-dir", run_dir])
    lines = res.stderr.strip().splitlines()
    state = dnax.RunDir(run_dir).load_state(timm_retrainer.RESUME)
    finite = all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())
    exported = (run_dir / "model/model.safetensors").exists()
    again = faultkit.cli(["run", ref.toml, "--run-dir", run_dir])
    diffs = faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    fault.record(category="divergence", fault="NaN loss in retraining at epoch 2 step 3",
                 outcome=f"exit {res.exit_code}: {hide(lines, run_dir)!r}; resume state of "
                 f"epoch {state['epoch']} kept{'' if finite else ' (NOT finite)'}; re-run "
                 f"resumed from it; {EXACT if not diffs else 'differs'}")
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert re.fullmatch(r"error: retrain epoch 2/3: loss is nan at step 3; .*model/resume\.pt.*",
                        lines[0])
    assert state["epoch"] == 1 and finite and not exported
    assert again.exit_code == 0, again.output
    assert "resuming retraining after epoch 1/3" in again.stdout
    assert not diffs
