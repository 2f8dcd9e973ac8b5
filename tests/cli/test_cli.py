"""The CLI: exit codes, one line per problem, JSON outputs, run + inspect."""

from __future__ import annotations

import json

import pytest
import tomli_w
from typer.testing import CliRunner

import dnax
from dnax.cli.app import app

cli = CliRunner()


@pytest.fixture
def use_registry(monkeypatch, registry):
    monkeypatch.setattr("dnax.cli.app.get_registry", lambda: registry)
    return registry


def _write(tmp_path, pipeline, name="p.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(pipeline))
    return path


def test_version():
    res = cli.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"dnax {dnax.__version__}"


def test_validate_prints_exactly_the_two_problems_and_exits_2(use_registry, pipeline,
                                                               tmp_path):
    pipeline["trainer"]["epochs"] = "ten"
    pipeline["trainer"]["epoch"] = 3
    res = cli.invoke(app, ["validate", str(_write(tmp_path, pipeline))])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert sorted(lines) == sorted(['error: $.trainer.epochs: expected int, got "ten"',
                                    "error: $.trainer.epoch: unknown key (did you mean "
                                    "'epochs'?)"])
    assert "Traceback" not in res.output


def test_validate_json_prints_the_plan(use_registry, pipeline, tmp_path):
    res = cli.invoke(app, ["validate", "--json", str(_write(tmp_path, pipeline))])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["stages"] == ["teacher", "train", "rank", "select", "retrain"]
    assert [(b["in_chs"], b["out_chs"], b["stride"], b["out_size"], b["num_candidates"])
            for b in data["plan"]["blocks"]] == [(8, 16, 2, 4, 4), (16, 24, 2, 2, 4)]
    assert data["plan"]["num_networks"] == 16


def test_plugins_json_lists_every_kind(use_registry):
    res = cli.invoke(app, ["plugins", "--json"])
    data = json.loads(res.stdout)
    assert {e["name"] for e in data["kinds"]["teacher"]} >= {"standin"}
    assert all(data["kinds"][k] for k in data["kinds"])


def test_run_then_inspect(use_registry, pipeline, tmp_path):
    path = _write(tmp_path, pipeline)
    res = cli.invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "selected network" in res.stdout and "dnax report" in res.stdout
    res = cli.invoke(app, ["inspect", str(tmp_path / "run"), "--json", "--top", "2"])
    data = json.loads(res.stdout)
    assert data["finished"] == ["teacher", "train", "rank", "select", "retrain"]
    assert [len(r["top"]) for r in data["rankings"]] == [2, 2]
    top = data["rankings"][0]["top"]
    assert top[0]["scores"]["nmae"] <= top[1]["scores"]["nmae"]
    assert data["selection"]["candidates"] == list(dnax.load_run(tmp_path / "run")
                                                   .selection.candidates)
    res = cli.invoke(app, ["inspect", str(tmp_path / "run"), "--block", "1"])
    assert res.exit_code == 0 and "block 1: top 4 of 4 candidates by nmae" in res.stdout


@pytest.mark.parametrize("args", [["inspect", "/nonexistent/run"],
                                  ["validate", "/nonexistent/p.toml"]])
def test_user_errors_exit_2_with_one_line(use_registry, args):
    res = cli.invoke(app, args)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")


def test_run_with_unknown_force_stage_exits_2(use_registry, pipeline, tmp_path):
    res = cli.invoke(app, ["run", str(_write(tmp_path, pipeline)), "--force", "nope",
                           "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--force: unknown stage 'nope'" in res.stderr


def test_inspect_draws_the_pareto_front_of_the_exact_selector(use_registry, pipeline, tmp_path,
                                                              monkeypatch):
    pipeline["selector"] = {"plugin": "exact", "budgets": {"params": 116}, "top_k": 3}
    run_dir = tmp_path / "run"
    res = cli.invoke(app, ["run", str(_write(tmp_path, pipeline)), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["inspect", str(run_dir), "--no-png", "--json"])
    assert json.loads(res.stdout)["pareto_png"] is None
    assert not (run_dir / "selection" / "pareto.png").exists()

    res = cli.invoke(app, ["inspect", str(run_dir), "--json"])
    data = json.loads(res.stdout)
    png = run_dir / "selection" / "pareto.png"
    assert data["pareto_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the select stage's costs come back per candidate, and the chosen network is on the front
    assert data["fixed_costs"] == {"params": 100.0}
    assert all("params" in t["costs"] for r in data["rankings"] for t in r["top"])
    front = json.loads((run_dir / "selection" / "front.json").read_text())
    assert data["selection"]["candidates"] in front["candidates"]
    best = data["best_networks"]["networks"]
    assert len(best) == 3 and best[0]["candidates"] == data["selection"]["candidates"]
    assert [n["score"] for n in best] == sorted(n["score"] for n in best)
    res = cli.invoke(app, ["inspect", str(run_dir), "--no-png"])
    assert "best 3 networks by nmae under params ≤ 116" in res.stdout

    other = tmp_path / "elsewhere.png"
    res = cli.invoke(app, ["inspect", str(run_dir), "--png", str(other)])
    assert res.exit_code == 0 and other.exists() and f"Pareto front: {other}" in res.stdout

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    res = cli.invoke(app, ["inspect", str(run_dir)])
    assert res.exit_code == 2 and "needs matplotlib" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_report_shows_the_final_networks_measured_latency_beside_prediction_and_budget():
    from rich.console import Console

    from dnax.cli.render import report_table

    report = {"pipeline": "p", "teacher": {"top1": 90.0}, "student": {
        "top1": 88.5, "latency_measured_ms": 3.21, "latency_predicted_ms": 3.05,
        "latency_budget_ms": 3.5}, "stages": {}}
    console = Console(width=100, record=True, color_system=None)
    console.print(report_table(report))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip()
            for line in text.splitlines() if line.count("│") == 4}
    assert rows["latency ms, measured"] == "3.21"
    assert rows["latency ms, predicted"] == "3.05"
    assert rows["latency ms, budget"] == "3.5"
    plain = dict(report, student={"top1": 88.5})
    console = Console(width=100, record=True, color_system=None)
    console.print(report_table(plain))
    assert "latency" not in console.export_text()
