"""docs/reproduction/reproduce.py and its package repro/: the smoke scale end to end on real
Fashion-MNIST images (two processes sharing the stand-alone runs), its raw files checked against
independent counts, the table regenerated from the raw files alone, resuming, and the
deadline."""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
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
from paths import ROOT
from scipy import stats

SCRIPT = ROOT / "docs" / "reproduction" / "reproduce.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _load():
    """The entry script, loaded by its path; it puts its folder on sys.path for its package."""
    spec = importlib.util.spec_from_file_location("dnax_reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


script = _load()  # main(): the command line
repro = importlib.import_module("repro")  # docs/reproduction/repro/: the steps' modules

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
    got = repro.sample.stratified_depths(n, 3, np.random.default_rng(0))
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
    picks = repro.blocks.block_picks(Space(), blocks, n, seed=0)
    assert len(picks) == len(set(picks)) == 2 * sum(want)
    for b in range(2):
        cells = collections.Counter(Space().candidates(None)[i].cell for k, i in picks if k == b)
        assert [cells[c] for c in range(3)] == want
    # a smaller n picks a prefix of what a larger one picks (a rerun with more only adds)
    assert set(repro.blocks.block_picks(Space(), blocks, 3, seed=0)) <= set(picks)


@pytest.mark.slow  # starts processes
def test_claims_are_exclusive_and_a_dead_owner_is_taken_over(tmp_path):
    exp = repro.common.Experiment(tmp_path, "smoke")
    task = repro.standalone.Task("arch000-s0", "sample", 0, 0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / task.name).write_text(str(dead.pid))
    assert repro.standalone.claim(exp, task)  # its owner has exited
    assert (tmp_path / "claims" / task.name).read_text() == str(os.getpid())
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "claims" / task.name).write_text(str(alive.pid))
        assert not repro.standalone.claim(exp, task)  # a live process holds it
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
        assert script.main(args) == 0
    return buf.getvalue()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # the smoke scale, end to end
@needs_fashion
def test_smoke_writes_every_raw_file(smoke):
    import dnax

    results, _, _ = smoke
    s = repro.common.SCALES["smoke"]
    steps = json.loads((results / "steps.json").read_text())
    assert set(steps) == {*repro.common.STEPS[:-1], "all"}
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
    assert toml["trainer"]["epochs"] == repro.common.LONGER * s.distill_epochs
    rescored = {(int(r["block"]), int(r["candidate"])): r
                for r in _csv(results / "scores-longer.csv")}
    assert rescored.keys() == scores.keys()
    assert any(rescored[k]["nmae"] != scores[k]["nmae"] for k in scores)

    runs = _csv(results / "standalone.csv")
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names))  # two processes, no run twice
    # the pilot: the sample's first pilot_archs at each rung's E; then, at the decided E, the
    # student, the matched architectures and the rest of the sample (no teacher, no random)
    pilot = json.loads((results / "pilot.json").read_text())
    decided = pilot["decision"]["epochs"]
    rungs = [r["epochs"] for r in pilot["rungs"]]
    assert rungs == list(s.epoch_ladder[:len(rungs)]) and decided == rungs[-1]
    seeds = s.truth_seeds or range(s.seeds)
    ids = {g: [a["id"] for a in archs if a["group"] == g] for g in ("sample", "matched")}
    want = {f"arch{i:03d}-s{k}-e{e}" for i in ids["sample"][:s.pilot_archs] for k in seeds
            for e in rungs}
    want |= {f"arch{i:03d}-s{k}-e{decided}" for i in ids["sample"] + ids["matched"]
             for k in seeds}
    want |= {f"student-s{k}-e{decided}" for k in seeds}
    assert set(names) == want
    for r in runs:
        if r["id"]:
            assert int(r["params"]) == archs[int(r["id"])]["params"]
        assert 0 <= float(r["top1"]) <= 100
        assert int(r["epochs"]) == int(r["name"].rsplit("-e", 1)[1])
    # each rung's figures by hand from its rows (statistics, not numpy)
    import math
    import statistics

    for rung in pilot["rungs"]:
        top = [[float(next(r["top1"] for r in runs
                            if r["name"] == f"arch{i:03d}-s{k}-e{rung['epochs']}"))
                for k in seeds] for i in ids["sample"][:s.pilot_archs]]
        seed_var = statistics.fmean(statistics.variance(t) for t in top)
        arch_var = max(statistics.variance([statistics.fmean(t) for t in top])
                       - seed_var / len(seeds), 0.0)
        r1 = arch_var / (arch_var + seed_var) if arch_var + seed_var else 0.0
        assert rung["r1"] == pytest.approx(r1, abs=1e-9)
        assert rung["expected_tau"] == pytest.approx(2 / math.pi * math.asin(r1), abs=1e-9)
        assert rung["met"] == (rung["expected_tau"] >= 0.6)
    student = json.loads((results / "search.json").read_text())["student"]
    assert {int(r["params"]) for r in runs if r["group"] == "student"} == {student["params"]}
    search = json.loads((results / "search.json").read_text())
    assert student["params"] <= search["budgets"]["params"] == int(s.budget_fraction * budget)
    # matched: params within 5 % of the student's, by the trained networks' own counts
    matched = [int(r["params"]) for r in runs if r["group"] == "matched"]
    assert len(ids["matched"]) == s.matched_archs and matched
    assert all(abs(m - student["params"]) <= 0.05 * student["params"] for m in matched)
    assert not (results / "run" / "model").exists()  # with a pilot the search stops at select

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
    assert {r["images"] for r in spos} == {"heldout"}  # never the truth's val images


@pytest.mark.slow  # the smoke scale, end to end
@needs_fashion
def test_table_figures_match_scipy_on_the_raw_files(smoke):
    results, _, _ = smoke
    spec = json.loads((results / "archs.json").read_text())
    scores = {(int(r["block"]), int(r["candidate"])): float(r["nmae"])
              for r in _csv(results / "scores.csv")}
    decided = json.loads((results / "pilot.json").read_text())["decision"]["epochs"]
    runs = [r for r in _csv(results / "standalone.csv") if int(r["epochs"]) == decided]
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
    assert f"| {ceiling:.2f} |" in row("single-seed noise ceiling")

    # PROTOCOL.md's endpoints, by scipy: differences of τ-b and Kendall's partial τ
    def tau(x):
        return stats.kendalltau(x, truth).statistic

    def value(name: str) -> float:
        return float(re.findall(r"\| (-?\d+\.\d\d) \[", row(name))[0])

    good = [-r for r in rating]
    for name, x in (("primary 1", [a["flops"] for a in sample]),
                    ("primary 2", [a["params"] for a in sample]),
                    ("secondary: τ(DNA) - τ(depth)", [sum(a["depths"]) for a in sample])):
        assert value(name) == pytest.approx(tau(good) - tau(x), abs=0.006)
    params = [a["params"] for a in sample]
    t_gp, t_tp = stats.kendalltau(good, params).statistic, tau(params)
    with np.errstate(invalid="ignore", divide="ignore"):  # |τ| = 1 with 4 architectures
        partial = (tau(good) - t_gp * t_tp) / np.sqrt((1 - t_gp ** 2) * (1 - t_tp ** 2))
    if np.isfinite(partial):
        assert value("primary 3") == pytest.approx(partial, abs=0.006)
    else:
        assert "| n/a [" in row("primary 3")
    assert re.search(r"Verdict by PROTOCOL\.md's rule: \*\*(success|failure|inconclusive)\*\*",
                     table)
    assert all((results / f"scatter-{k}.png").read_bytes()[:4] == b"\x89PNG" for k in range(5))
    # seed noise by hand: two seeds, so each architecture's variance is (a - b)^2 / 2
    a, b = np.array(seeds["0"]), np.array(seeds["1"])
    pooled = np.sqrt(np.mean((a - b) ** 2 / 2))
    noise = next(line for line in table.splitlines() if line.startswith("- seed noise"))
    assert f"standard deviation of {pooled:.2f} points" in noise
    assert f"between seeds {stats.pearsonr(a, b).statistic:.2f}" in noise


@pytest.mark.slow  # the smoke scale, end to end
@needs_fashion
def test_rerun_skips_finished_steps_and_regenerates_the_same_table(smoke):
    results, args, _ = smoke
    before = (results / "RESULTS.md").read_text()
    out = _run(args)
    assert out.count("finished earlier, skipped") == len(repro.common.STEPS) - 1
    assert (results / "RESULTS.md").read_text().split("## Wall time")[0] == \
        before.split("## Wall time")[0]
    _run([*args, "table"])
    again = (results / "RESULTS.md").read_text()
    _run([*args, "table"])
    assert (results / "RESULTS.md").read_text() == again


@pytest.mark.slow  # the smoke scale, end to end
@needs_fashion
def test_table_needs_only_the_raw_files(smoke, tmp_path):
    results, _, _ = smoke
    copy = tmp_path / results.name  # same folder name: the table names it
    copy.mkdir()
    for name in repro.common.Experiment.RAW:
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
    repro.common.write_csv(work / "standalone.csv", rows[:-drop], repro.standalone.STANDALONE)
    for r in rows[-drop:]:
        shutil.rmtree(work / "standalone" / r["name"], ignore_errors=True)
    steps = json.loads((work / "steps.json").read_text())
    del steps["standalone"]["finished"]
    repro.common.write_json(work / "steps.json", steps)
    shutil.rmtree(work / "claims", ignore_errors=True)
    return rows


@pytest.mark.slow  # the smoke scale, end to end
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


@pytest.mark.slow  # the smoke scale, end to end
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
    repro.common.write_json(tmp_path / "settings.json", {"scale": "smoke", "seed": 1})
    with pytest.raises(SystemExit, match="other settings"):
        script.main(["table", "--scale", "smoke", "--results", str(tmp_path)])


def test_table_without_raw_files_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match=r"settings\.json: missing"):
        script.main(["table", "--scale", "smoke", "--results", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


# --- PROTOCOL.md's rules, by hand ---------------------------------------------------------------

def test_pilot_rung_by_hand():
    # per architecture (ddof 1): 2, 0, 2 -> seed variance 4/3; means 81, 85, 89 -> variance
    # 16, less (4/3) / 2 seeds -> 46/3; r1 = (46/3) / (46/3 + 4/3) = 0.92
    rung = repro.standalone.pilot_rung(np.array([[80, 82], [85, 85], [90, 88]]),
                                       [20.0, 30.0, 40.0], 10)
    assert rung["s_seed"] == pytest.approx((4 / 3) ** 0.5)
    assert rung["s_arch"] == pytest.approx((46 / 3) ** 0.5)
    assert rung["r1"] == pytest.approx(0.92)
    assert rung["expected_tau"] == pytest.approx(2 / np.pi * np.arcsin(0.92))
    assert rung["seconds_per_epoch"] == pytest.approx(3.0)  # median 30 s over 10 epochs
    assert rung["met"]
    # the architectures' variance floored at 0: all the spread is the seeds'
    flat = repro.standalone.pilot_rung(np.array([[80, 90], [90, 80], [85, 85]]), [1.0], 1)
    assert flat["r1"] == 0.0 and flat["expected_tau"] == 0.0 and not flat["met"]


def test_expected_seed_tau_matches_a_simulation():
    """The rung's expected τ from simulated seeds (the architecture's effect with variance r1
    plus seed noise with variance 1 - r1) against scipy's Kendall τ between the two seeds."""
    rng = np.random.default_rng(0)
    for r1 in (0.3, 0.809, 0.95):
        arch = rng.normal(0, np.sqrt(r1), 40_000)
        a, b = (arch + rng.normal(0, np.sqrt(1 - r1), 40_000) for _ in range(2))
        rung = repro.standalone.pilot_rung(np.stack([a, b], 1), [1.0], 1)
        assert rung["r1"] == pytest.approx(r1, abs=0.02)
        assert rung["expected_tau"] == pytest.approx(stats.kendalltau(a, b).statistic,
                                                     abs=0.015)


def test_pilot_size_by_hand():
    s = repro.common.SCALES["gpu"]  # pilot 8, matched 5, min 32, at most 96 architectures
    rung = {"seconds_per_epoch": 2.0, "epochs": 10, "seeds": 3}  # 60 s per architecture
    # 4 workers x 600 s = 40 architectures, + the pilot's 8, - the student and 5 matched = 42
    assert repro.standalone.pilot_size(rung, s, 4, 600.0) == 42
    assert repro.standalone.pilot_size(rung, s, 4, 300.0) is None  # 20 + 8 - 6 = 22 < 32
    assert repro.standalone.pilot_size(rung, s, 64, 600.0) == 96  # capped at the sample drawn
    assert repro.standalone.pilot_size(rung, s, 4, None) == 96  # no deadline
    assert repro.standalone.pilot_size(rung, dataclasses.replace(s, archs=30), 4, None) is None


@pytest.mark.parametrize(("e1", "e2", "want"), [
    ((0.1, 0.02, 0.2), (0.2, 0.01, 0.3), "success"),
    ((0.1, -0.02, 0.2), (0.2, 0.01, 0.3), "inconclusive"),
    ((0.1, -0.02, 0.2), (0.2, -0.01, 0.3), "inconclusive"),
    ((0.1, 0.02, 0.2), (-0.01, -0.2, 0.1), "failure"),  # a point estimate <= 0
    ((0.0, -0.1, 0.1), (0.2, 0.1, 0.3), "failure"),
    ((0.1, 0.05, 0.2), (-0.3, -0.5, -0.1), "failure"),  # an interval below 0
])
def test_verdict_follows_the_protocol(e1, e2, want):
    def end(v):
        return {"value": v[0], "ci": [v[1], v[2]]}

    word, why = repro.analysis.verdict(end(e1), end(e2))
    assert word == want
    if want == "inconclusive":
        assert why == ("τ(DNA) - τ(FLOPs)'s interval includes 0" if e2[1] > 0 else
                       "τ(DNA) - τ(FLOPs)'s interval and τ(DNA) - τ(params)'s interval "
                       "include 0")


def test_student_vs_matched_by_hand():
    # no spread within the student or within each matched architecture: every resample of the
    # seeds gives the same means; the architectures' resamples spread the matched mean
    got = repro.analysis.student_vs_matched([80.0, 80.0], [[70.0, 70.0], [74.0, 74.0]], n_boot=4000)
    assert got["value"] == pytest.approx(80 - 72)
    lo, hi = got["ci"]
    assert lo == pytest.approx(80 - 74) and hi == pytest.approx(80 - 70)
    same = repro.analysis.student_vs_matched([80.0, 80.0], [[75.0, 75.0]] * 3, n_boot=500)
    assert same["ci"] == [pytest.approx(5.0), pytest.approx(5.0)]


@pytest.mark.slow  # the smoke scale, end to end
@needs_fashion
def test_the_pilot_rule_stops_the_run_before_the_truth_runs(smoke, tmp_path, monkeypatch):
    """A binding rule that cannot be met (more architectures needed than drawn): the pilot's
    runs only, a decision that says why, and no step after the pilot."""
    results, _, _ = smoke
    scale = dataclasses.replace(repro.common.SCALES["smoke"], pilot_binding=True, epoch_ladder=(1,),
                                min_archs=repro.common.SCALES["smoke"].archs + 1)
    monkeypatch.setitem(repro.common.SCALES, "binding", scale)
    work = tmp_path / "binding"
    work.mkdir()
    for name in ("archs.json", "search.json", "scores.csv"):
        shutil.copy(results / name, work / name)
    shutil.copytree(results / "run", work / "run")
    steps = json.loads((results / "steps.json").read_text())
    repro.common.write_json(work / "steps.json", {k: steps[k] for k in ("sample", "search")})
    settings = {**json.loads((results / "settings.json").read_text()),
                **json.loads(json.dumps(dataclasses.asdict(scale))), "scale": "binding"}
    for k in ("workers", "minutes"):
        settings.pop(k)
    repro.common.write_json(work / "settings.json", settings)
    shutil.copy(results / "pipeline.toml", work / "pipeline.toml")
    out = _run(["--scale", "binding", "--results", str(work), "--threads", "1",
                "--workers", "2"])
    assert "the pilot's rule stopped the run before the truth runs" in out
    decision = json.loads((work / "pilot.json").read_text())["decision"]
    assert not decision["go"] and decision["reason"]
    names = {r["name"] for r in _csv(work / "standalone.csv")}
    sample = [a["id"] for a in json.loads((work / "archs.json").read_text())["archs"]
              if a["group"] == "sample"][:scale.pilot_archs]
    assert names == {f"arch{i:03d}-s{k}-e1" for i in sample for k in range(scale.seeds)}
    steps = json.loads((work / "steps.json").read_text())
    assert "finished" not in steps["pilot"]
    assert not {"matched", "blocks", "spos", "standalone"} & set(steps)
