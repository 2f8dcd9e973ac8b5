"""docs/reproduction/reproduce.py: the smoke scale end to end on real Fashion-MNIST images (two
processes sharing the stand-alone runs), its raw files checked against independent counts, the
table regenerated from the raw files alone, resuming, and the deadline."""

from __future__ import annotations

import collections
import contextlib
import csv
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "reproduction" / "reproduce.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _load():
    spec = importlib.util.spec_from_file_location("dnax_reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


repro = _load()

needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST missing (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Other processes share the 2 cores: one thread is faster and steadier here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- pieces, against brute force ----------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 27, 32, 60])
def test_stratified_depths_cover_the_combinations_evenly(n):
    combos = list(itertools.product(range(3), repeat=3))
    got = repro.stratified_depths(n, 3, np.random.default_rng(0))
    assert len(got) == n
    counts = collections.Counter(got)
    assert set(counts) <= set(combos)
    # every combination n // 27 or n // 27 + 1 times, and each depth per block near n / 3
    assert all(n // 27 <= counts.get(c, 0) <= n // 27 + 1 for c in combos)
    for b in range(3):
        per = collections.Counter(c[b] for c in got)
        assert max(per.values()) - min(per.values()) <= max(1, n // 27 + 1) * 9


@pytest.mark.parametrize(("n", "want"), [(3, [1, 1, 1]), (24, [6, 9, 9]), (30, [6, 12, 12]),
                                         (300, [6, 36, 216])])
def test_block_picks_spread_over_the_cells_as_their_sizes_allow(n, want):
    from types import SimpleNamespace

    class Space:  # cells of 6, 36 and 216 candidates, as the mbconv space's 1, 2, 3 layers
        def candidates(self, spec):
            return [SimpleNamespace(cell=c) for c, size in enumerate((6, 36, 216))
                    for _ in range(size)]

    blocks = [SimpleNamespace(index=b) for b in range(2)]
    picks = repro.block_picks(Space(), blocks, n, seed=0)
    assert len(picks) == len(set(picks)) == 2 * sum(want)
    for b in range(2):
        cells = collections.Counter(Space().candidates(None)[i].cell for k, i in picks if k == b)
        assert [cells[c] for c in range(3)] == want
    # a smaller n picks a prefix of what a larger one picks (a rerun with more only adds)
    assert set(repro.block_picks(Space(), blocks, 3, seed=0)) <= set(picks)


def test_claims_are_exclusive_and_a_dead_owner_is_taken_over(tmp_path):
    exp = repro.Experiment(tmp_path, "smoke")
    task = repro.Task("arch000-s0", "sample", 0, 0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / task.name).write_text(str(dead.pid))
    assert repro.claim(exp, task)  # its owner has exited
    assert (tmp_path / "claims" / task.name).read_text() == str(os.getpid())
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "claims" / task.name).write_text(str(alive.pid))
        assert not repro.claim(exp, task)  # a live process holds it
    finally:
        alive.kill()
        alive.wait()


# --- the smoke scale end to end -----------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every step at the smoke scale into a fresh folder; returns (folder, args, stdout)."""
    results = tmp_path_factory.mktemp("repro") / "smoke"
    args = ["--scale", "smoke", "--results", str(results), "--table",
            str(results / "RESULTS.md"), "--threads", "1"]
    return results, args, _run(args)


def _run(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert repro.main(args) == 0
    return buf.getvalue()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@needs_fashion
def test_smoke_writes_every_raw_file(smoke):
    import dnax

    results, _, _ = smoke
    s = repro.SCALES["smoke"]
    steps = json.loads((results / "steps.json").read_text())
    assert set(steps) == {*repro.STEPS[:-1], "all"}
    assert all(r.get("finished") and r["sessions"] == 1 for r in steps.values())

    spec = json.loads((results / "archs.json").read_text())
    archs = spec["archs"]
    sample = [a for a in archs if a["group"] == "sample"]
    randoms = [a for a in archs if a["group"] == "random"]
    assert len(sample) == s.archs and len(randoms) == s.random_archs
    assert len({tuple(a["candidates"]) for a in archs}) == len(archs)
    budget = spec["budget"]["params"]
    assert all(a["params"] <= budget for a in randoms)
    # the sample's depths: no combination twice while some is unused (4 of 27 here)
    assert len({tuple(a["depths"]) for a in sample}) == len(sample)

    # ratings: the run's own rankings (safetensors), read through dnax, against scores.csv
    run = dnax.load_run(results / "run")
    rankings = run.rankings()
    scores = {(int(r["block"]), int(r["candidate"])): r for r in _csv(results / "scores.csv")}
    assert len(scores) == sum(len(r.candidates) for r in rankings) == 3 * (6 + 36 + 216)
    for a in archs:
        for b, (i, ops) in enumerate(zip(a["candidates"], a["ops"], strict=True)):
            cand = rankings[b].candidates[i]
            assert (cand.cell, list(cand.ops)) == (a["cells"][b], ops)
            assert float(scores[(b, i)]["nmae"]) == pytest.approx(
                float(rankings[b].scores["nmae"][i]), rel=1e-5)

    # the longer supernets: the same teacher (reused stage), 3x the epochs, new scores
    import tomllib

    longer = dnax.load_run(results / "run-longer")
    assert longer.results["teacher"].metrics == run.results["teacher"].metrics
    assert longer.results["teacher"].weights == run.results["teacher"].weights
    toml = tomllib.loads((results / "pipeline-longer.toml").read_text())
    assert toml["trainer"]["epochs"] == repro.LONGER * s.distill_epochs
    rescored = {(int(r["block"]), int(r["candidate"])): r
                for r in _csv(results / "scores-longer.csv")}
    assert rescored.keys() == scores.keys()
    assert any(rescored[k]["nmae"] != scores[k]["nmae"] for k in scores)

    runs = _csv(results / "standalone.csv")
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names))  # two processes, no run twice
    want = {f"arch{a['id']:03d}-s{k}" for a in archs for k in range(s.seeds)}
    want |= {f"{g}-s{k}" for g in ("teacher", "student") for k in range(s.seeds)}
    assert set(names) == want
    for r in runs:
        if r["id"]:
            assert int(r["params"]) == archs[int(r["id"])]["params"]
        assert 0 <= float(r["top1"]) <= 100 and int(r["epochs"]) == s.standalone_epochs
    student = json.loads((results / "search.json").read_text())["student"]
    assert {int(r["params"]) for r in runs if r["group"] == "student"} == {student["params"]}
    assert student["params"] <= budget

    blocks = _csv(results / "blocks.csv")
    for b in range(3):
        rows = [r for r in blocks if int(r["block"]) == b]
        assert len(rows) == s.block_candidates
        assert sorted(int(r["depth"]) for r in rows) == [1, 2, 3]  # one per cell
        for r in rows:
            cand = rankings[b].candidates[int(r["candidate"])]
            assert (cand.cell, " ".join(map(str, cand.ops))) == (int(r["cell"]), r["ops"])
    spos = _csv(results / "spos.csv")
    assert sorted(int(r["id"]) for r in spos) == [a["id"] for a in archs]


@needs_fashion
def test_table_figures_match_scipy_on_the_raw_files(smoke):
    results, _, _ = smoke
    spec = json.loads((results / "archs.json").read_text())
    scores = {(int(r["block"]), int(r["candidate"])): float(r["nmae"])
              for r in _csv(results / "scores.csv")}
    runs = _csv(results / "standalone.csv")
    spos = {int(r["id"]): float(r["top1"]) for r in _csv(results / "spos.csv")}
    sample = [a for a in spec["archs"] if a["group"] == "sample"]
    rating = [sum(scores[(b, i)] for b, i in enumerate(a["candidates"])) for a in sample]
    truth = [np.mean([float(r["top1"]) for r in runs if r["id"] == str(a["id"])])
             for a in sample]
    table = (results / "RESULTS.md").read_text()

    def row(name: str) -> str:
        return next(line for line in table.splitlines() if line.startswith(f"| {name}"))

    def first(line: str) -> float:
        return float(re.findall(r"\| (-?\d\.\d\d) \[", line)[0])

    tau = stats.kendalltau([-r for r in rating], truth).statistic
    assert first(row("DNA rating")) == pytest.approx(tau, abs=0.006)
    longer = {(int(r["block"]), int(r["candidate"])): float(r["nmae"])
              for r in _csv(results / "scores-longer.csv")}
    rating2 = [sum(longer[(b, i)] for b, i in enumerate(a["candidates"])) for a in sample]
    tau2 = stats.kendalltau([-r for r in rating2], truth).statistic
    assert first(row("DNA rating, block supernets")) == pytest.approx(tau2, abs=0.006)
    tau_spos = stats.kendalltau([spos[a["id"]] for a in sample], truth).statistic
    assert first(row("SPOS path top-1")) == pytest.approx(tau_spos, abs=0.006)
    listed = table.split("## Architectures")[1].splitlines()
    for a, r in zip(sample, rating, strict=True):
        line = next(x for x in listed if x.startswith(f"| {a['id']} |"))
        assert f"| {r:.4f} |" in line
    seeds = {k: [float(r["top1"]) for a in sample for r in runs
                 if r["id"] == str(a["id"]) and r["seed"] == k] for k in ("0", "1")}
    ceiling = stats.kendalltau(seeds["0"], seeds["1"]).statistic
    assert f"| {ceiling:.2f} [" in row("noise ceiling")
    # seed noise by hand: two seeds, so each architecture's variance is (a - b)^2 / 2
    a, b = np.array(seeds["0"]), np.array(seeds["1"])
    pooled = np.sqrt(np.mean((a - b) ** 2 / 2))
    noise = next(line for line in table.splitlines() if line.startswith("- seed noise"))
    assert f"standard deviation of {pooled:.2f} points" in noise
    assert f"between seeds {stats.pearsonr(a, b).statistic:.2f}" in noise


@needs_fashion
def test_rerun_skips_finished_steps_and_regenerates_the_same_table(smoke):
    results, args, _ = smoke
    before = (results / "RESULTS.md").read_text()
    out = _run(args)
    assert out.count("finished earlier, skipped") == len(repro.STEPS) - 1
    assert (results / "RESULTS.md").read_text().split("## Wall time")[0] == \
        before.split("## Wall time")[0]
    _run([*args, "table"])
    again = (results / "RESULTS.md").read_text()
    _run([*args, "table"])
    assert (results / "RESULTS.md").read_text() == again


@needs_fashion
def test_table_needs_only_the_raw_files(smoke, tmp_path):
    results, _, _ = smoke
    copy = tmp_path / results.name  # same folder name: the table names it
    copy.mkdir()
    for name in repro.Experiment.RAW:
        shutil.copy(results / name, copy / name)
    _run(["table", "--scale", "smoke", "--results", str(results), "--table",
          str(results / "RESULTS.md")])
    _run(["table", "--scale", "smoke", "--results", str(copy), "--table",
          str(copy / "RESULTS.md")])
    assert (copy / "RESULTS.md").read_text() == (results / "RESULTS.md").read_text()


def _cut(results: Path, work: Path, drop: int) -> list[dict[str, str]]:
    """A copy of the results as if killed after all but the last ``drop`` stand-alone runs."""
    shutil.copytree(results, work)
    rows = _csv(work / "standalone.csv")
    repro.write_csv(work / "standalone.csv", rows[:-drop], repro.STANDALONE)
    for r in rows[-drop:]:
        shutil.rmtree(work / "standalone" / r["name"], ignore_errors=True)
    steps = json.loads((work / "steps.json").read_text())
    del steps["standalone"]["finished"]
    repro.write_json(work / "steps.json", steps)
    shutil.rmtree(work / "claims", ignore_errors=True)
    return rows


@needs_fashion
def test_standalone_resumes_at_the_missing_runs(smoke, tmp_path):
    results, _, _ = smoke
    work = tmp_path / results.name
    rows = _cut(results, work, drop=2)
    _run(["standalone", "--scale", "smoke", "--results", str(work), "--threads", "1",
          "--workers", "1"])
    again = {r["name"]: r for r in _csv(work / "standalone.csv")}
    assert set(again) == {r["name"] for r in rows}
    for r in rows[-2:]:
        if r["group"] != "student":  # the fixed recipe and seed are deterministic
            assert again[r["name"]]["top1"] == r["top1"]
    assert json.loads((work / "steps.json").read_text())["standalone"]["sessions"] == 2


@needs_fashion
def test_a_deadline_cuts_the_runs_and_leaves_the_step_unfinished(smoke, tmp_path):
    results, _, _ = smoke
    work = tmp_path / results.name
    rows = _cut(results, work, drop=3)
    out = _run(["standalone", "--scale", "smoke", "--results", str(work), "--threads", "1",
                "--workers", "1", "--minutes", "1e-9"])
    assert "deadline" in out
    assert len(_csv(work / "standalone.csv")) == len(rows) - 3
    step = json.loads((work / "steps.json").read_text())["standalone"]
    assert "finished" not in step and step["cut"]


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    repro.write_json(tmp_path / "settings.json", {"scale": "smoke", "seed": 1})
    with pytest.raises(SystemExit, match="other settings"):
        repro.main(["table", "--scale", "smoke", "--results", str(tmp_path)])


def test_table_without_raw_files_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match=r"settings\.json: missing"):
        repro.main(["table", "--scale", "smoke", "--results", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
