"""Nothing finished is ever lost: bad input is refused before the run folder is touched.

A table of bad inputs a user plausibly makes, each tried against a fresh run folder, a finished
run and a half-finished one (teacher finished, supernet training interrupted). Each case checks
three things: the exit code, one error line naming the field or file, and every file of the run
folder byte-identical (and not rewritten: same mtime) before and after. A killed forced redo of
the teacher leaves the old teacher usable. Recorded in docs/reliability.md ("bad input").
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faultkit
import numpy as np
import pytest
import tomli_w

import dnax

pytestmark = pytest.mark.slow  # runs dnax against run folders, in processes for the kills

pytest_plugins = ["reliability"]

STATES = ("fresh", "finished", "half-finished")
ALL = STATES
DONE = ("finished", "half-finished")


@pytest.fixture(autouse=True)
def _torch():
    with faultkit.torch_settings():
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """An image folder: train/ with classes a, b, c; val/ the same; val_missing/ without c;
    val_extra/ with a class d that train lacks."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for split, classes in (("train", "abc"), ("val", "abc"), ("val_missing", "ab"),
                           ("val_extra", "abcd")):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (40 * ord(c) % 255, 0, 0)).save(root / split / c / "0.png")
    return root


def _state(ref, tmp_path: Path, state: str) -> Path:
    run_dir = tmp_path / "run"
    if state == "finished":
        shutil.copytree(ref.run_dir, run_dir)
    elif state == "half-finished":  # as a killed supernet training leaves it
        faultkit.keep_until(ref.run_dir, run_dir, "train")
        shutil.copytree(ref.run_dir / "supernets", run_dir / "supernets")
        shutil.copy2(ref.run_dir / "stages/train.started.json", run_dir / "stages")
        assert (run_dir / "supernets/resume.pt").exists()
    return run_dir


def _folder_data(images: Path, val_dir: str, root: Path | None = None) -> dict:
    return {"data": {"plugin": "folder", "root": str(root or images), "val_dir": val_dir,
                     "heldout_size": 1}}


def _pipeline(**tables) -> dict:
    out = faultkit.pipeline()
    for name, table in tables.items():
        out[name] = table if name == "data" else {**out[name], **table}
        out[name] = {k: v for k, v in out[name].items() if v is not None}
    return out


#: (case, pipeline changes (or a function of the image folder), extra `dnax run` arguments,
#:  states it is bad input in, words the one error line must hold; validate too?)
CASES = [
    ("teacher model misspelled (tinynet_ee)",
     {"teacher": {"arch_def": None, "model": "tinynet_ee"}}, [], ALL,
     "$.teacher: model: unknown timm model 'tinynet_ee' (did you mean 'tinynet_e'?)", True),
    ("teacher model that does not exist (efficientnet_b9)",
     {"teacher": {"arch_def": None, "model": "efficientnet_b9"}}, [], ALL,
     "$.teacher: model: unknown timm model 'efficientnet_b9'", True),
    ("val folder missing a class of train",
     lambda images: _folder_data(images, "val_missing"), [], ALL,
     "$.data: val_dir: {images}/val_missing: lacks 1 of the train folder's 3 classes (c)", True),
    ("val folder with a class train lacks",
     lambda images: _folder_data(images, "val_extra"), [], ALL,
     "$.data: val_dir: {images}/val_extra: 1 classes the train folder lacks (d)", True),
    ("data folder that does not exist",
     lambda images: _folder_data(images, "val", images / "nope"), [], ALL,
     "{images}/nope", True),
    ("params budget below the cheapest network",
     {"selector": {"budgets": {"params": 5000.0}}}, [], ALL,
     "$.selector.budgets.params: 5000 is below the cheapest network of the space (6784 params)",
     True),
    ("budget on a metric no cost model measures",
     {"selector": {"budgets": {"latency": 1.0}}}, [], ALL,
     "$.selector: budgets.latency: no [[costs]] model measures 'latency'", True),
    ("teacher key changed on a run whose teacher finished, no --force",
     {"teacher": {"epochs": 3}}, [], DONE,
     "$.teacher.epochs changed (2 -> 3) since the teacher stage finished; that redoes teacher, "
     "train, rank, select, retrain: re-run with --force teacher (or --rerun)", False),
    ("trainer key changed on a finished run, no --force",
     {"trainer": {"lr": [0.004]}}, [], ("finished",),
     "$.trainer.lr changed ([0.005] -> [0.004]) since the train stage finished", False),
    ("misspelled key (trainer.epochz)", {"trainer": {"epochz": 3}}, [], ALL,
     "$.trainer.epochz: unknown key (did you mean 'epochs'?)", True),
    ("negative epoch count", {"trainer": {"epochs": -1}}, [], ALL,
     "$.trainer.epochs: must be > 0, got -1", True),
    ("unknown plugin name (distil)", {"trainer": {"plugin": "distil"}}, [], ALL,
     "$.trainer.plugin: unknown trainer 'distil'", True),
    ("bad arch string in the space", {"space": {"stem_stage": ["ir_r1_k3_sX_e1_c8"]}}, [], ALL,
     "$.space.stem_stage: not a timm arch string stage", True),
    ("space with more blocks than the teacher has",
     {"space": {"blocks": [{"cells": [{"depth": 1}]}] * 3}}, [], ALL,
     "$.space.blocks: the space has 3 blocks, the teacher has 2", True),
    ("teacher weights file that does not exist", {"teacher": {"weights": "nope.safetensors"}},
     [], ALL, "$.teacher.weights: no such file or folder", True),
    ("--force with an unknown stage", {}, ["--force", "trian"], ALL,
     "--force: unknown stage 'trian' (stages: teacher, train, rank, select, retrain)", False),
    ("TOML syntax error", "broken", [], ALL, "pipeline.toml: ", True),
]


@pytest.mark.parametrize(("case", "change", "args", "states", "words", "validate"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_nothing_is_lost(tiny_reference, images, tmp_path, fault,
                                                  case, change, args, states, words, validate):
    toml = tmp_path / "pipeline.toml"
    if change == "broken":
        toml.write_text(tomli_w.dumps(faultkit.pipeline()) + "\n[trainer\nepochs = 3\n")
    else:
        config = change(images) if callable(change) else change
        toml.write_text(tomli_w.dumps(_pipeline(**config)))
    words = words.format(images=images)
    outcomes = []
    for state in states:
        run_dir = _state(tiny_reference, tmp_path / state, state)
        before = faultkit.snapshot(run_dir) if run_dir.exists() else None
        res = faultkit.cli(["run", toml, "--run-dir", run_dir, *args])
        lines = res.stderr.strip().splitlines()
        after = faultkit.snapshot(run_dir) if run_dir.exists() else None
        outcomes.append((state, res.exit_code, len(lines), before == after))
        assert res.exit_code == 2, (state, res.output)
        assert len(lines) == 1 and lines[0].startswith("error: "), (state, res.stderr)
        assert words in lines[0], (state, lines[0])
        assert after == before, f"{state}: the run folder changed"
    if validate:
        res = faultkit.cli(["validate", toml])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.output
    named = re.match(r"\$\.\w+: [\w.]+|[^ :]+", words)[0].replace(str(images), "IMAGES")
    fault.record(category="bad input", fault=case, cases=len(states) + validate,
                 outcome=f"exit 2, one line naming {named}; run folder "
                 f"byte-identical ({', '.join(states)})" + ("; `validate` refuses it too"
                                                            if validate else ""))


def test_changed_key_with_rerun_redoes_only_what_changed(tiny_reference, tmp_path, fault):
    """With --rerun the changed stage and those after it are redone; the stages before it keep
    their files untouched; no folder is left aside."""
    run_dir = _state(tiny_reference, tmp_path, "finished")
    kept = {f: faultkit.snapshot(run_dir / f) for f in ("teacher", "supernets", "rankings")}
    toml = tmp_path / "changed.toml"
    toml.write_text(tomli_w.dumps(_pipeline(selector={"top_k": 3})))
    res = faultkit.cli(["run", toml, "--run-dir", run_dir, "--rerun"])
    assert res.exit_code == 0, res.output
    assert faultkit.ran(res.stdout) == {"teacher": "reused", "train": "reused",
                                        "rank": "reused", "select": "run", "retrain": "run"}
    assert "select   redo    (changed: selector.top_k (5 -> 3))" in res.stdout
    assert {f: faultkit.snapshot(run_dir / f) for f in kept} == kept
    assert not (run_dir / ".redo").exists()
    fault.record(category="bad input", fault="selector key changed, run with --rerun",
                 outcome="plan printed (select: changed selector.top_k); select and retrain "
                 "redone; earlier stages' files untouched; nothing left aside")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, "the run ended before the checkpoint"
        assert time.monotonic() - t0 < timeout, f"no {path} in {timeout} s"
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_forced_redo_of_the_teacher_keeps_the_old_teacher(tiny_reference, tmp_path,
                                                                 fault):
    """``dnax run --force teacher`` killed after the new teacher's first checkpoint: every file
    of the finished run is as it was, `inspect` says all finished, and a plain run reuses all
    stages. Then the forced redo run to the end swaps in a teacher equal to the old one (same
    config, deterministic)."""
    run_dir = _state(tiny_reference, tmp_path, "finished")
    before = faultkit.snapshot(run_dir)
    proc = faultkit.start(tiny_reference.toml, run_dir, "--force", "teacher")
    try:
        _wait_for(run_dir / ".redo/teacher/teacher/resume.pt", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    after = faultkit.snapshot(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".redo/")} == before
    res = faultkit.cli(["inspect", run_dir, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["finished"] == list(faultkit.STAGES)  # inspect stays true
    teacher = dnax.load_run(run_dir).results["teacher"]
    assert teacher == dnax.load_run(tiny_reference.run_dir).results["teacher"]
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir])
    assert res.exit_code == 0, res.output
    assert set(faultkit.ran(res.stdout).values()) == {"reused"}
    # resumed to the end: the new teacher is swapped in, equal to the old one
    faultkit.run_to_end(tiny_reference.toml, run_dir, "--force", "teacher")
    assert not faultkit.differences(tiny_reference.artefacts, faultkit.artefacts(run_dir))
    assert not (run_dir / ".redo").exists()
    fault.record(category="bad input", fault="SIGKILL during a forced redo of the finished "
                 "teacher (after its first checkpoint)", outcome="every file of the finished "
                 "run byte-identical; a plain re-run reuses all stages; the forced redo run "
                 "again resumes and swaps in a bit-identical teacher and later stages")


# --- the budget check's cheapest network, against brute force ---------------------------------


def test_cheapest_network_of_the_tiny_space_is_the_brute_force_minimum():
    """The params the budget check names equal the fewest parameters of any network of the tiny
    space, found by building all 400 with timm and counting their parameters."""
    import timm.models.efficientnet as E

    from dnax.registry import Registry

    registry = Registry.create(entry_points=False)
    config = dnax.load_pipeline(faultkit.pipeline(), registry)
    plugins = dnax.runner.instantiate(config, registry)
    plan = dnax.runner.build_plan(config, plugins)
    blocks = [b.spec for b in plan.blocks]
    space = plugins.space
    counts = []
    for chosen in itertools.product(*(space.candidates(b) for b in blocks)):
        arch = space.arch_def(blocks, chosen)
        kwargs = space.model_kwargs()
        net = E.EfficientNet(E.decode_arch_def(arch), num_classes=10, stem_size=kwargs[
            "stem_size"], num_features=kwargs["num_features"])
        counts.append(sum(p.numel() for p in net.parameters()))
    assert len(counts) == (4 + 4 ** 2) ** 2  # cells of 1 and 2 layers, 4 ops, 2 blocks
    config = dnax.load_pipeline(_pipeline(selector={"budgets": {"params": min(counts) - 1.0}}),
                                registry)
    with pytest.raises(dnax.ConfigError, match=rf"cheapest network of the space "
                       rf"\({min(counts)} params\)"):
        dnax.preflight.check_pipeline(config, dnax.runner.instantiate(config, registry))
    config = dnax.load_pipeline(_pipeline(selector={"budgets": {"params": float(min(counts))}}),
                                registry)
    dnax.preflight.check_pipeline(config, dnax.runner.instantiate(config, registry))  # fits


@pytest.mark.parametrize("seed", range(5))
def test_cheapest_follows_the_width_chain_like_brute_force(seed):
    """2-D costs (one row per width entering a block): the dynamic programme equals the minimum
    over every choice of one candidate per block, each costed in the row its predecessor's
    width selects."""
    rng = np.random.default_rng(seed)
    widths = [(8, 16), (16, 24, 32), (8,)]  # each block's cell widths
    rankings = []
    for k, cells in enumerate(widths):
        cands = tuple(dnax.Candidate(k, i, i % len(cells), (0,), ("x",))
                      for i in range(int(rng.integers(2, 5))))
        rows = 1 if k == 0 else len(set(widths[k - 1]))
        costs = rng.uniform(1, 10, size=(rows, len(cands)) if rows > 1 else len(cands))
        rankings.append(dnax.BlockRanking(k, cands, {}, {"m": costs}, cell_widths=cells))
    best = np.inf
    for choice in itertools.product(*(range(len(r.candidates)) for r in rankings)):
        total = 3.0
        for k, i in enumerate(choice):
            a = rankings[k].costs["m"]
            if a.ndim == 1:
                total += a[i]
            else:
                prev = rankings[k - 1]
                width = prev.cell_widths[prev.candidates[choice[k - 1]].cell]
                total += a[sorted(set(prev.cell_widths)).index(width), i]
        best = min(best, total)
    assert dnax.costing.cheapest(rankings, "m", 3.0) == pytest.approx(best, rel=1e-12)


def test_swap_interrupted_after_the_moves_is_finished_by_the_next_run(tmp_path):
    """A kill between the moves and the record: the journal completes the swap."""
    from dnax.staging import finish_swaps, swap

    rd = dnax.RunDir(tmp_path)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher/w").write_text("old")
    rd.write_json("stages/teacher.json", {"hash": "old"}, kind="stage")
    (tmp_path / ".redo/teacher/teacher").mkdir(parents=True)
    (tmp_path / ".redo/teacher/teacher/w").write_text("new")
    rd.write_json(".redo/teacher/swap.json", {
        "stage": "teacher", "owned": ["teacher"], "produced": ["teacher"],
        "record": {"hash": "new"}, "record_kind": "stage"}, kind="swap")
    # the kill landed after the old folder went aside and the new one in place
    (tmp_path / ".redo/teacher/.old").mkdir()
    (tmp_path / "teacher").rename(tmp_path / ".redo/teacher/.old/teacher")
    (tmp_path / ".redo/teacher/teacher").rename(tmp_path / "teacher")
    assert finish_swaps(rd) == ["teacher"]
    assert (tmp_path / "teacher/w").read_text() == "new"
    assert rd.read_json("stages/teacher.json", kind="stage")["hash"] == "new"
    assert not (tmp_path / ".redo").exists()
    # and an uninterrupted swap of a stage that no longer writes one of its names removes it
    (tmp_path / "selection.json").write_text("old")
    (tmp_path / ".redo/select/selection").mkdir(parents=True)
    swap(rd, "select", ["selection", "selection.json"], {"hash": "s"}, kind="stage")
    assert (tmp_path / "selection").is_dir() and not (tmp_path / "selection.json").exists()


def test_subprocess_cli_exits_2_on_a_typo_without_creating_the_run_folder(tiny_reference,
                                                                         tmp_path):
    """The real process (not the in-process runner): nothing is created for a fresh run."""
    toml = tmp_path / "p.toml"
    toml.write_text(tomli_w.dumps(_pipeline(teacher={"arch_def": None, "model": "tinynet_ee"})))
    proc = subprocess.run([sys.executable, "-m", "dnax", "run", str(toml), "--run-dir",
                           str(tmp_path / "r")], capture_output=True, text=True,
                          env={**__import__("os").environ, **faultkit.ENV}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "r").exists()


def test_changed_keys_name_every_difference_by_hand():
    """A key added, removed or changed, nested or not, and a table that appears."""
    from dnax.staging import changed_keys

    old = {"trainer": {"lr": [0.005], "epochs": 3, "sched": {"warmup": 1}}, "costs": None}
    new = {"trainer": {"lr": [0.005], "epochs": 4, "sched": {"warmup": 2}, "ema": 0.9},
           "costs": [{"plugin": "params"}]}
    assert changed_keys(old, new) == [
        "costs (None -> [{'plugin': 'params'}])", "trainer.ema (unset -> 0.9)",
        "trainer.epochs (3 -> 4)", "trainer.sched.warmup (1 -> 2)"]
    assert changed_keys(new, new) == []
