"""The worked example plugin package: installed for real, found through its entry point, run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from paths import EXAMPLE_PLUGIN

import dnax

pytestmark = pytest.mark.slow  # installs and runs the example plugin in processes

PLUGIN = EXAMPLE_PLUGIN


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-installs tests/example_plugin into a folder put on PYTHONPATH for the subprocesses."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(PLUGIN)],
                         capture_output=True, text=True, cwd=build)
    assert res.returncode == 0, res.stderr[-2000:]
    return target


def _dnax(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(site), "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("DNAX_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "dnax", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_found_through_its_entry_point(site, tmp_path):
    res = _dnax(site, "plugins", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    teachers = {e["name"]: e for e in data["kinds"]["teacher"]}
    spaces = {e["name"]: e for e in data["kinds"]["space"]}
    assert teachers["tinycnn"]["distribution"] == "dnax-example"
    assert teachers["tinycnn"]["version"] == "0.1.0"
    assert spaces["convs"]["module"] == "dnax_example"
    assert data["failures"] == []


def test_dnax_run_uses_it(site, tmp_path):
    res = _dnax(site, "validate", "--json", str(PLUGIN / "pipeline.toml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)["plan"]
    assert plan["teacher"] == "tinycnn" and plan["space"] == "convs"
    assert [(b["in_chs"], b["out_chs"], b["in_size"], b["out_size"]) for b in plan["blocks"]] \
        == [(8, 12, 16, 8), (12, 16, 8, 4)]
    assert plan["num_networks"] == 16
    res = _dnax(site, "run", str(PLUGIN / "pipeline.toml"), "--run-dir", str(tmp_path / "run"),
                cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    teacher = json.loads((tmp_path / "run" / "stages" / "teacher.json").read_text())["result"]
    assert teacher["model"] == "tinycnn"
    assert teacher["metrics"]["top1"] > 30  # percent; two epochs on real digits, chance is 10
    assert (tmp_path / "run" / "teacher" / "teacher.safetensors").exists()
    # dnax's own trainer, evaluator, costs and selector work on the third-party space
    run = dnax.load_run(tmp_path / "run")
    assert [len(r.candidates) for r in run.rankings()] == [4, 4]
    assert all(s.startswith("cn_") for stage in run.selection.arch_def[1:] for s in stage)
    assert run.selection.costs["params"] > 0


def test_its_command_is_a_dnax_command(site, tmp_path):
    res = _dnax(site, "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "example-hello" in res.stdout and "Say hello" in res.stdout
    res = _dnax(site, "example-hello", "--name", "tester", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("hello tester, from dnax-example")
    assert "warning" not in res.stderr


def test_bench_train_and_profile_time_its_teacher_and_space(site, tmp_path):
    """bench.toml: the example's teacher and space, tiny; neither is built into dnax."""
    toml = PLUGIN / "bench.toml"
    res = _dnax(site, "bench", "train", str(toml), "--batch-size", "4", "--steps", "2",
                "--warmup", "1", "--threads", "1", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["bench"] == "train" and report["arguments"]["resolution"] == 32
    assert report["details"]["blocks"] == 2 and report["details"]["cells"] == 2
    # tinycnn has no build_model(): it is prepared (trained) through the Teacher interface
    assert report["details"]["teacher_weights"].startswith("from the teacher's prepare()")
    assert report["details"]["official_prefix"] == "full-teacher"
    assert all(v > 0 for v in report["figures"].values())
    assert list(tmp_path.iterdir()) == []  # no --output: no file

    out = tmp_path / "latency.json"
    res = _dnax(site, "profile", str(toml), "-o", str(out), "--repeats", "2", "--warmup", "1",
                "--check", "3", "--threads", "1", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["table"] == str(out) and summary["resolution"] == 32
    assert summary["ops"] == 8  # 2 blocks x 2 layers x kernels {3, 5}
    assert {k.split(":", 1)[0] for k in summary["fixed"]} == {"stem", "head"}
    networks = summary["check"]["networks"]
    assert len(networks) == 3
    assert all(n["predicted_ms"] > 0 and n["measured_ms"] > 0 for n in networks)
    ops = json.loads(out.read_text())["devices"][summary["device"]]["ops"]
    assert len(ops) == 8 and all(key.startswith("cn_") for key in ops)  # the space's own ops
