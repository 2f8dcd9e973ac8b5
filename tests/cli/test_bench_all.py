"""``dnax bench all``: the GPU run's CPU smoke run (tiny sizes), its deadline and its report.

The CPU run is what keeps the command working between GPU loans: every part runs in its own
process as on the GPU, and its JSON and markdown name every figure. Timings are never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from paths import EXAMPLES, ROOT
from typer.testing import CliRunner

from dnax.cli.bench import bench_app
from dnax.plugins.measure.suite import PARTS

pytestmark = pytest.mark.slow  # runs the bench parts (pipelines)

cli = CliRunner()


def _run(args: list[str], code: int = 0) -> tuple[dict, str, str]:
    res = cli.invoke(bench_app, ["all", *args])
    assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
    out = Path(args[args.index("--output") + 1])
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), \
        res.stderr


def _names_every_figure(md: str) -> None:
    for name, part in PARTS.items():
        assert f"## {name}: {part.title}" in md
        for figure in part.figures:
            assert f"| {figure.replace('|', chr(92) + '|')} |" in md, (name, figure)


@pytest.mark.slow
def test_cpu_run_measures_every_part(tmp_path):
    report, md, stderr = _run(["--output", str(tmp_path), "--device", "cpu", "--threads", "1"])
    assert report["done"] and report["tiny"] and report["device"] == "cpu"
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("reason"), stderr)
        assert part["seconds"] > 0 and part["timeout_s"] >= part["budget_s"]
        assert part["figures"] and part["rows"] and part["caption"]
    assert report["elapsed_s"] <= report["deadline_s"]

    figs = {name: p["figures"] for name, p in report["parts"].items()}
    assert {f"{s}_s" for s in ("teacher", "train", "rank", "select", "retrain")} <= set(
        figs["digits"])
    assert figs["digits"]["onnx_max_abs_diff"] <= 1e-3
    for key in ("step_ms", "floor_ms", "official_ms", "images_per_s", "step_over_floor",
                "official_over_step"):
        assert math.isfinite(figs["train"][key]) and figs["train"][key] > 0
    assert figs["train"]["peak_allocated_gib"] is None  # no GPU memory on the CPU
    assert report["parts"]["train"]["report"]["arguments"]["teacher_model"] == \
        "tf_efficientnet_b7"
    assert figs["rank"]["float32_speedup"] > 0 and figs["rank"]["autocast_speedup"] > 0
    assert figs["rank"]["autocast_max_rel_diff"] == 0  # autocast is CUDA-only: both float32
    assert figs["profile"]["ops"] > 0 and -1 <= figs["profile"]["spearman"] <= 1

    _names_every_figure(md)
    assert "not performance figures" in md and "Deadline 270 s" in md
    for name, part in report["parts"].items():
        assert f"| {name} | ok | {part['seconds']:.1f} |" in md
    assert (tmp_path / "parts" / "digits" / "run" / "model" / "model.onnx").is_file()


def test_deadline_skips_the_parts_that_do_not_fit(tmp_path):
    report, md, _ = _run(["--output", str(tmp_path), "--device", "cpu", "--deadline", "1"])
    assert report["done"]
    for part in report["parts"].values():
        assert part["status"] == "skipped" and part["reason"].startswith("not started: ")
        assert "seconds" not in part
    _names_every_figure(md)
    assert md.count("Not measured (skipped): not started") == len(PARTS)


def test_a_part_past_its_time_is_stopped_and_reported(tmp_path):
    # rank gets the time profile's budget leaves it (about 1.5 s): too little to even import
    # torch, so it is stopped; then profile's 57 s no longer fit in the deadline
    report, md, _ = _run(["--output", str(tmp_path), "--device", "cpu", "--parts",
                          "rank,profile", "--budget", "rank=1", "--budget", "profile=57",
                          "--deadline", "59"], code=1)
    rank, profile = report["parts"]["rank"], report["parts"]["profile"]
    assert rank["status"] == "timed out" and rank["reason"].startswith("stopped after")
    assert rank["timeout_s"] <= 2 and rank["seconds"] < 30
    assert profile["status"] == "skipped" and "its budget is 57 s" in profile["reason"]
    assert "| rank | timed out |" in md and "| profile | skipped |" in md
    # a second run into the same folder replaces the first one's parts
    report, _, _ = _run(["--output", str(tmp_path), "--device", "cpu", "--parts", "rank",
                         "--deadline", "0.5"])
    assert report["parts"]["rank"]["status"] == "skipped"
    assert not (tmp_path / "parts" / "rank").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--parts", "digits,nope"], "--parts: 'nope'"),
    (["--parts", "rank,rank"], "--parts"),
    (["--budget", "rank=soon"], "--budget: 'rank=soon'"),
    (["--budget", "train=5", "--parts", "rank"], "--budget: 'train=5'"),
    (["--deadline", "0"], "--deadline"),
    (["--pipeline", "no-such.toml"], "--pipeline"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    res = cli.invoke(bench_app, ["all", "--output", str(tmp_path), "--device", "cpu", *args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert not (tmp_path / "bench.json").exists()


# --- what .ci/device/run.sh carries to the GPU machine (no network there) -------------------

DEVICE = ROOT / ".ci" / "device"


def test_the_carried_wheels_are_pure_python_and_the_versions_tested_here():
    from importlib.metadata import version

    wheels = sorted((DEVICE / "wheels").glob("*.whl"))
    names = {w.name.split("-")[0].lower(): w.name.split("-")[1] for w in wheels}
    assert {"cattrs", "tomli_w", "attrs", "typing_extensions"} == set(names)
    for wheel in wheels:
        assert wheel.name.endswith("-py3-none-any.whl") and wheel.stat().st_size < 200_000
    for name, carried in names.items():
        # refresh: pip download NAME==VERSION --no-deps --only-binary=:all: -d .ci/device/wheels
        assert version(name) == carried, f"{name}: {version(name)} here, {carried} carried"


def test_the_device_shim_loads_the_digits_as_scikit_learn_does():
    import importlib.util

    import numpy as np
    from sklearn.datasets import load_digits

    spec = importlib.util.spec_from_file_location(
        "shim_datasets", DEVICE / "shim" / "sklearn" / "datasets" / "__init__.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    ours, theirs = shim.load_digits(), load_digits()
    for key in ("images", "data", "target"):
        got, want = getattr(ours, key), getattr(theirs, key)
        assert got.dtype == want.dtype and np.array_equal(got, want), key


def test_bench_train_takes_a_teacher_model_only_with_a_preset():
    digits = EXAMPLES / "digits.toml"
    res = cli.invoke(bench_app, ["train", str(digits), "--teacher-model", "tf_efficientnet_b7"])
    assert res.exit_code == 2 and "--teacher-model: only with --preset" in res.stderr


def test_paper_rank_extrapolates_each_cell_by_its_leaves():
    from dnax.plugins.measure.suite import _units, extrapolate

    # by hand: 2 s for 6 of 288 leaves -> 96 s; 1 s for 36 of 1296 -> 36 s; a whole cell as is
    assert extrapolate([(2.0, 6, 288), (1.0, 36, 1296), (0.5, 6, 6)]) == pytest.approx(132.5)
    assert extrapolate([]) == 0
    units = _units((2, 3, 4))  # prefixes of the first two layers, 4 leaves under each
    assert units == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert _units((6,)) == [()]  # a one-layer cell is walked whole


def test_paper_rank_counts_the_paper_space():
    from dnax.plugins.measure.reports import teacher_and_space as _teacher_and_space

    _, teacher, space, _ = _teacher_and_space(None, "paper")
    blocks = teacher.blocks(224)
    assert [len(space.candidates(b)) for b in blocks] == [288, 1548, 1548, 2808, 16848, 6]
    assert sum(len(space.candidates(b)) for b in blocks) == 23046


def test_a_stopped_paper_rank_names_the_cells_it_walked(tmp_path):
    from dnax.plugins.measure.suite import PAPER_CELL, PARTIAL

    cell = {"block": 0, "cell": 0, "shape": [6, 6], "seconds": 1.5, "leaves": 6,
            "candidates": 36}
    (tmp_path / "log.txt").write_text(f"noise\n{PAPER_CELL}{json.dumps(cell)}\n"
                                      f"{PAPER_CELL}{json.dumps(cell)}\n")
    assert PARTIAL["paper-rank"](tmp_path) == "cells walked: 2, 12 candidates in 3.0 s"
