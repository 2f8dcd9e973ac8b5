"""``dnax bench train | rank | select``: JSON and table agree, ratios are a/b, bad options exit 2.

Timings are never asserted: only that they are positive, finite and consistent."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from paths import EXAMPLES
from typer.testing import CliRunner

from dnax.cli.bench import bench_app
from dnax.plugins.measure.reports import fmt

pytestmark = pytest.mark.slow  # runs the bench commands (training, ranking, selection)

cli = CliRunner()
DIGITS = EXAMPLES / "digits.toml"
KEYS = {"bench", "command", "arguments", "figures", "ratios", "goals", "details", "machine",
        "versions", "date"}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _invoke(args: list[str]) -> tuple[str, dict]:
    res = cli.invoke(bench_app, args)
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    path = Path(args[args.index("-o") + 1])
    return res.stdout, json.loads(path.read_text())


def _check_report(report: dict, what: str) -> None:
    assert report.keys() >= KEYS and report["bench"] == what
    assert report["figures"] and all(
        isinstance(v, float) and math.isfinite(v) and v > 0 for v in report["figures"].values())
    assert report["machine"]["cpu"] and report["machine"]["torch_threads"] >= 1
    assert {"dnax", "torch", "timm"} <= report["versions"].keys()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*\+00:00", report["date"])
    assert report["command"].startswith(f"dnax bench {what}")


def _cell(table: str, label: str) -> str:
    """The value column of the table row that starts with ``label``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1] == label:
            return cells[2]
    raise AssertionError(f"no row {label!r} in\n{table}")


def _num(text: str) -> float:
    return float(re.match(r"[\d.,e+-]+", text).group().replace(",", ""))


def _check_ratio(table: str, report: dict, name: str, label: str, a: str, b: str) -> None:
    """ratio == a / b in the JSON, and the printed ratio == the printed a / printed b."""
    ratio, figs = report["ratios"][name], report["figures"]
    assert ratio["of"] == [a, b]
    assert ratio["value"] == pytest.approx(figs[a] / figs[b], rel=1e-12)
    printed = {k: _cell(table, lab) for k, lab in label.items()}
    assert printed[a].startswith(fmt(figs[a])) and printed[b].startswith(fmt(figs[b]))
    shown = _num(printed["ratio"])
    assert printed["ratio"] == f"{ratio['value']:.2f}x"
    # the ratio is rounded to 0.005, each figure to 4 significant digits (relative 5e-4 each)
    assert abs(shown - _num(printed[a]) / _num(printed[b])) <= 0.005 + 1e-3 * shown + 1e-12


def test_train_on_the_digits_pipeline(tmp_path):
    table, report = _invoke(["train", str(DIGITS), "--batch-size", "4", "--steps", "2",
                             "--warmup", "1", "--threads", "1", "-o", str(tmp_path / "t.json")])
    _check_report(report, "train")
    assert report["arguments"]["resolution"] == 32 and report["arguments"]["threads"] == 1
    assert report["details"]["blocks"] == 4 and report["details"]["cells"] == 8
    figs = report["figures"]
    assert figs["floor_ms"] == pytest.approx(figs["teacher_ms"] + figs["student_ms"])
    labels = {"step_ms": "step: all cells, one teacher forward",
              "floor_ms": "floor (sum)", "official_ms": "official: block after block"}
    _check_ratio(table, report, "step_over_floor",
                 {**labels, "ratio": "step / floor"}, "step_ms", "floor_ms")
    _check_ratio(table, report, "official_over_step",
                 {**labels, "ratio": "official / step"}, "official_ms", "step_ms")
    assert report["ratios"]["step_over_floor"]["goal"] == "<= 1.25x"
    assert "<= 1.25x" in _row(table, "step / floor")
    assert "untrained teacher weights" in table


def test_train_paper_preset_tiny(tmp_path):
    _, report = _invoke(["train", "--preset", "paper", "--resolution", "32", "--batch-size",
                         "2", "--steps", "1", "--warmup", "0", "--threads", "1",
                         "-o", str(tmp_path / "p.json")])
    _check_report(report, "train")
    assert report["details"]["blocks"] == 6 and report["details"]["cells"] == 16


def test_rank(tmp_path):
    table, report = _invoke(["rank", "--depth", "2", "--ops", "3", "--batch-size", "2",
                             "--size", "8", "--threads", "1", "-o", str(tmp_path / "r.json")])
    _check_report(report, "rank")
    assert report["details"]["candidates"] == 9 and report["details"]["max_rel_diff"] < 1e-4
    _check_ratio(table, report, "speedup",
                 {"tree_s": "tree walk (shared prefixes)", "plain_s": "plain loop (one by one)",
                  "ratio": "plain / tree"}, "plain_s", "tree_s")
    assert ">= 3x" in _row(table, "plain / tree")


def test_select_json_to_stdout_and_no_file_without_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(bench_app, ["select", "--metrics", "params,flops", "--repeats", "1",
                                 "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert list(tmp_path.iterdir()) == []  # files are written only where --output says
    _check_report(report, "select")
    assert report["details"]["candidates"] == [288, 1548, 1548, 2808, 16848, 6]
    assert report["details"]["networks"] == pytest.approx(1.959e17, rel=1e-3)
    assert set(report["details"]["budgets"]) == {"params", "flops"}
    goal = report["goals"]["seconds"]
    assert goal["goal"] == "< 100 ms" and goal["met"] == (goal["value"] < 0.1)


def test_select_three_budgets_family_checked_against_highs(tmp_path):
    """Two instances with params, FLOPs and latency budgets: medians and max of the family,
    every best score checked against HiGHS, the goals of three budgets."""
    table, report = _invoke(["select", "--metrics", "params,flops,latency", "--seeds", "2",
                             "--tightness", "0.3", "--repeats", "1", "--check", "-o",
                             str(tmp_path / "s.json")])
    runs = report["details"]["runs"]
    assert [(r["seed"], r["tightness"]) for r in runs] == [(0, 0.3), (1, 0.3)]
    assert all(r["matches_highs"] and r["optimal"] and r["method"] == "core" for r in runs)
    assert all(abs(r["score"] - r["highs_score"]) <= 1e-9 * abs(r["highs_score"]) for r in runs)
    assert report["figures"]["max_seconds"] == max(r["seconds"] for r in runs)
    assert report["goals"]["seconds"]["goal"] == "< 1000 ms"
    assert report["goals"]["max_seconds"]["goal"] == "< 5000 ms"
    assert _cell(table, "best score equal to HiGHS (1e-9 relative)") == "2 of 2"
    assert _cell(table, "proven optimal") == "2 of 2"


def test_select_table(tmp_path):
    table, report = _invoke(["select", "--repeats", "1", "-o", str(tmp_path / "s.json")])
    ms = report["figures"]["seconds"] * 1e3
    assert _cell(table, "exact solve, median of 1") == f"{fmt(ms)} ms"
    assert "< 100 ms" in _row(table, "exact solve, median of 1")


def test_table_without_output_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(bench_app, ["select", "--repeats", "1"])
    assert res.exit_code == 0, res.stderr
    assert "exact solve, median of 1" in res.stdout and "written:" not in res.stdout
    assert list(tmp_path.iterdir()) == []


def _row(table: str, label: str) -> str:
    return next(line for line in table.splitlines() if f"│ {label} " in line)


@pytest.mark.parametrize("args, field", [
    (["select", "--metrics", "energy"], "--metrics"),
    (["select", "--tightness", "2"], "--tightness"),
    (["rank", "--recal", "sometimes"], "--recal"),
    (["rank", "--ops", "16"], "--ops"),
    (["rank", "--device", "tpu"], "--device"),
    (["train"], "PIPELINE or --preset"),
    (["train", "--preset", "paper", "--amp", "fp8"], "--amp"),
    (["train", "--preset", "huge"], "--preset"),
    (["train", str(DIGITS), "--batch-size", "0"], "--batch-size"),
    (["train", "no-such.toml"], "no-such.toml"),
])
def test_bad_option_exits_2_with_one_line(args, field, tmp_path):
    res = cli.invoke(bench_app, [*args, "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines
    assert not (tmp_path / "x.json").exists()
