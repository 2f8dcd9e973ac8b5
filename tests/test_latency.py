"""Latency: `dnax profile` tables, the `latency` cost model, the exact selector under a latency
budget, `--check` (predicted against measured) and the command. No timed assertions: the
numbers are noisy, so only structure and exact sums are checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import dnax
from dnax.plugins.costs import latency
from dnax.plugins.costs import profile as prof
from dnax.plugins.costs.latency import Latency, LatencyConfig
from dnax.registry import Registry

#: 3 searched blocks (teacher stages 1..3) of an untrained 32 px teacher; per block two cells
#: (1 and 2 layers), each layer kernel {3, 5} x expansion {3, 6}: 4 + 16 candidates
PIPELINE = """
[pipeline]
name = "tiny"
resolution = 32
device = "cpu"

[data]
plugin = "digits"

[teacher]
plugin = "efficientnet"
arch_def = [["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c24"],
            ["ir_r1_k3_s1_e3_c32"]]
stem_size = 8
num_features = 64

[space]
plugin = "mbconv"
preset = "custom"
kernels = [3, 5]
expansions = [3, 6]
stem_size = 8
stem_stage = ["ds_r1_k3_s1_e1_c8"]
num_features = 64
blocks = [
    { cells = [{ depth = 1 }, { depth = 2 }] },
    { cells = [{ depth = 1 }, { depth = 2 }] },
    { cells = [{ depth = 1 }, { depth = 2 }] },
]
"""
COSTS = """
[trainer]
plugin = "distill"

[evaluator]
plugin = "prefix"

[[costs]]
plugin = "latency"
table = "tables/lat.json"

[selector]
plugin = "exact"
budgets = { latency = 5.0 }
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: steadier timings where other jobs share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reg():
    return Registry.create(entry_points=False, plugins=[latency])


@pytest.fixture(scope="module")
def measured(tmp_path_factory, reg):
    """The tiny pipeline profiled once on CPU: (config, table dict, table path)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("profile")
    toml = root / "tiny.toml"
    toml.write_text(PIPELINE)
    config = prof.load_for_profile(toml, reg)
    table = prof.profile(config, reg, batch_size=1, repeats=2, warmup=1, device="cpu")
    path = root / "lat.json"
    prof.write_table(path, table)
    torch.set_num_threads(before)
    return config, table, path


def _ctx(config, reg):
    return prof.make_context(config, reg, "cpu", stage="select")


def _expected_keys(ctx) -> set[str]:
    """Every distinct op key of the space, worked out from the arch strings alone."""
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    keys, in_chs = set(), 8  # the stem stage's width
    for spec in blocks:
        width = ctx.plugins.space.cells(spec)[0].out_chs
        for cand in ctx.plugins.space.candidates(spec):
            keys.add(f"{cand.arch[0]}@{in_chs}x{spec.in_size}|b1")
            keys |= {f"{a}@{width}x{spec.out_size}:inner|b1" for a in cand.arch[1:]}
        in_chs = width
    return keys


def _entry(table):
    return table["devices"][table["device"]]


def test_profile_covers_every_distinct_op(measured, reg):
    config, table, path = measured
    assert table["format"] == latency.KIND and table["device"] == prof.device_name("cpu")
    entry = _entry(table)
    assert (entry["batch_size"], entry["resolution"], entry["threads"]) == (1, 32, 1)
    expected = _expected_keys(_ctx(config, reg))
    assert len(expected) == 3 * (4 + 4)  # per block: 4 first-layer ops, 4 inner ops
    assert set(entry["ops"]) == expected
    assert all(math.isfinite(v) and v > 0 for v in entry["ops"].values())
    assert sorted(k.split(":")[0] for k in entry["fixed"]) == ["head", "stem"]
    assert json.loads(path.read_text()) == table  # written as returned


def test_candidate_costs_are_sums_of_the_table(measured, reg):
    config, table, path = measured
    ops, fixed = _entry(table)["ops"], _entry(table)["fixed"]
    ctx = _ctx(config, reg)
    model = Latency(LatencyConfig(table=path))
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    in_chs = 8
    for spec in blocks:
        cands = ctx.plugins.space.candidates(spec)
        width = cands[0].arch[0].split("_c")[1].split("_")[0]
        costs = model.candidate_costs(ctx, spec, cands)
        for cand, cost in zip(cands, costs, strict=True):
            want = ops[f"{cand.arch[0]}@{in_chs}x{spec.in_size}|b1"] + sum(
                ops[f"{a}@{width}x{spec.out_size}:inner|b1"] for a in cand.arch[1:])
            assert cost == want
        in_chs = int(width)
    assert model.fixed_cost(ctx, blocks) == sum(fixed.values())


def test_missing_op_names_the_table_and_the_op(measured, reg, tmp_path):
    config, table, _ = measured
    ctx = _ctx(config, reg)
    spec = ctx.plugins.teacher.blocks(32)[1]
    cand = ctx.plugins.space.candidates(spec)[0]
    gone = f"{cand.arch[0]}@16x{spec.in_size}|b1"
    broken = json.loads(json.dumps(table))
    del _entry(broken)["ops"][gone]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(dnax.ArtifactError) as e:
        Latency(LatencyConfig(table=path)).candidate_costs(ctx, spec, [cand])
    (line,) = e.value.problems
    assert str(path) in line and gone in line and "dnax profile" in line and "\n" not in line
    # a table measured at another resolution says so
    other = prof.make_context(
        dnax.PipelineConfig(dnax.PipelineSettings(resolution=64), config.sections), reg, "cpu")
    spec64 = other.plugins.teacher.blocks(64)[0]
    with pytest.raises(dnax.ArtifactError, match="measured at 32 px, the pipeline runs at 64"):
        Latency(LatencyConfig(table=path)).candidate_costs(
            other, spec64, other.plugins.space.candidates(spec64)[:1])


def test_tables_of_several_devices(measured, tmp_path):
    _, table, _ = measured
    name = table["device"]
    slow = {**_entry(table), "ops": {k: 2 * v for k, v in _entry(table)["ops"].items()}}
    path = tmp_path / "two.json"
    prof.write_table(path, {**table, "device": "Slow NPU", "devices": {"Slow NPU": slow}})
    merged = prof.write_table(path, table)  # the CPU's entry added, the NPU's kept
    assert set(merged["devices"]) == {name, "Slow NPU"} and merged["device"] == name
    assert Latency(LatencyConfig(table=path)).entry[0] == name
    assert Latency(LatencyConfig(table=path, device="Slow NPU")).entry[1] == slow
    with pytest.raises(dnax.ArtifactError, match="no measurements for device 'TPU'"):
        _ = Latency(LatencyConfig(table=path, device="TPU")).entry
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(dnax.ArtifactError, match="not a dnax latency table"):
        prof.write_table(other, table)
    assert prof.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_exact_selector_under_a_latency_budget(measured, reg, tmp_path):
    from dnax.plugins.selectors.exact import Exact, ExactConfig

    config, _, path = measured
    ctx = _ctx(config, reg)
    ctx.run_dir = dnax.RunDir(tmp_path / "run")
    model = Latency(LatencyConfig(table=path))
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    rng = np.random.default_rng(0)
    rankings = []
    for spec in blocks:
        cands = tuple(ctx.plugins.space.candidates(spec))
        rankings.append(dnax.BlockRanking(spec.index, cands, {"nmae": rng.random(len(cands))},
                                          {"latency": model.candidate_costs(ctx, spec, cands)}))
    fixed = model.fixed_cost(ctx, blocks)
    fastest = fixed + sum(r.costs["latency"].min() for r in rankings)
    best = [int(np.argmin(r.scores["nmae"])) for r in rankings]
    unconstrained = fixed + sum(r.costs["latency"][i] for r, i in zip(rankings, best,
                                                                      strict=True))
    assert unconstrained > fastest
    budget = (fastest + unconstrained) / 2
    sel = Exact(ExactConfig(budgets={"latency": budget})).select(ctx, rankings,
                                                                 {"latency": fixed})
    predicted = fixed + sum(r.costs["latency"][i] for r, i in zip(rankings, sel.candidates,
                                                                  strict=True))
    assert predicted <= budget and sel.costs["latency"] == pytest.approx(predicted)
    assert list(sel.candidates) != best


def test_pipeline_with_latency_costs(tmp_path, reg):
    toml = tmp_path / "p.toml"
    toml.write_text(PIPELINE + COSTS)
    with pytest.raises(dnax.ConfigError, match=r"costs\[0\]\.table: no such file.*dnax profile"):
        dnax.load_pipeline(toml, reg)
    config = prof.load_for_profile(toml, reg)  # profiling ignores [[costs]] and [selector]
    assert set(config.sections) == {"data", "teacher", "space"} and not config.costs
    table = prof.profile(config, reg, repeats=1, warmup=0, device="cpu")
    prof.write_table(tmp_path / "tables" / "lat.json", table)
    full = dnax.load_pipeline(toml, reg)
    assert full.costs[0].config.table == (tmp_path / "tables" / "lat.json").resolve()
    assert full.sections["selector"].config.budgets == {"latency": 5.0}


def test_check_predicts_each_network_from_the_table(measured, reg):
    config, _, path = measured
    result = prof.check(config, reg, path, 4, seed=1, device="cpu", repeats=2, warmup=1)
    assert len(result.pairs) == 4 and len(set(result.choices)) == 4
    assert all(math.isfinite(p) and math.isfinite(m) and p > 0 and m > 0
               for p, m in result.pairs)
    assert -1 <= result.spearman <= 1 and -1 <= result.kendall <= 1
    ctx = _ctx(config, reg)
    model = Latency(LatencyConfig(table=path))
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    for choice, predicted in zip(result.choices, result.predicted, strict=True):
        parts = [model.candidate_costs(ctx, b, [ctx.plugins.space.candidates(b)[i]])[0]
                 for b, i in zip(blocks, choice, strict=True)]
        assert predicted == pytest.approx(model.fixed_cost(ctx, blocks) + sum(parts))


def test_rank_correlations():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert prof.spearman(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert prof.kendall(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(prof.spearman(x, [1.0] * 5)) and math.isnan(prof.kendall(x, [1.0] * 5))
    # ties: tau-b and average ranks, as scipy computes them
    a, b = [1, 2, 2, 3, 5, 4, 7], [2, 1, 3, 3, 6, 8, 7]
    assert prof.kendall(a, b) == pytest.approx(0.65)
    assert prof.spearman(a, b) == pytest.approx(0.8090909090909091)
    stats = pytest.importorskip("scipy.stats", reason="scipy cross-check")
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 5, 30), rng.integers(0, 5, 30)
    assert prof.kendall(u, v) == pytest.approx(stats.kendalltau(u, v).statistic)
    assert prof.spearman(u, v) == pytest.approx(stats.spearmanr(u, v).statistic)


def test_profile_command(tmp_path, reg, monkeypatch):
    from dnax.cli.common import user_errors
    from dnax.cli.profile import profile_command

    monkeypatch.setattr("dnax.cli.profile.get_registry", lambda: reg)
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        """dnax"""

    app.command("profile")(user_errors(profile_command))
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE)
    cli = CliRunner()
    args = ["profile", str(toml), "--repeats", "2", "--warmup", "1", "--check", "3",
            "--threads", "1"]
    res = cli.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    written = Path(data["table"])
    assert written == tmp_path / f"latency-{prof.slug(prof.device_name('cpu'))}.json"
    assert data["ops"] == 24 and len(data["check"]["networks"]) == 3
    assert set(latency.read_table(written)["devices"]) == {data["device"]}
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "ops measured" in res.stdout and "Spearman" in res.stdout
    res = cli.invoke(app, ["profile", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"error: {tmp_path / 'nope.toml'}: no such pipeline file")
