"""``dnax bench all``: the GPU run's CPU smoke run (tiny sizes), its deadline and its report.

The CPU run is what keeps the command working between GPU loans: every part runs in its own
process as on the GPU, and its JSON and markdown name every figure. Timings are never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnax.cli.bench import bench_app
from dnax.cli.bench_all import PARTS

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

DEVICE = Path(__file__).resolve().parents[1] / ".ci" / "device"


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
    digits = Path(__file__).resolve().parents[1] / "docs" / "examples" / "digits.toml"
    res = cli.invoke(bench_app, ["train", str(digits), "--teacher-model", "tf_efficientnet_b7"])
    assert res.exit_code == 2 and "--teacher-model: only with --preset" in res.stderr
