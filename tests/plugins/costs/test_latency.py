"""Latency: `dnax profile` tables (in-context parts, calibration, protocol, runtimes), the
`latency` cost model, the exact selector under a latency budget, `--check` (predicted against
measured, its statistics) and the command, the retrained network's measured latency.

Timings are noisy on a shared machine: exactness is checked with a stubbed runtime whose parts
and whole networks take known times; the one real timing bound (test_real_check_is_loosely_close)
is loose."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import dnax
from dnax.plugins.costs import latency, runtimes
from dnax.plugins.costs.latency import Latency, LatencyConfig
from dnax.plugins.measure import profile as prof
from dnax.plugins.toolkit import timing
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


def _config(root: Path, reg, text: str = PIPELINE):
    toml = root / "tiny.toml"
    toml.write_text(text)
    return prof.load_for_profile(toml, reg)


@pytest.fixture(scope="module")
def measured(tmp_path_factory, reg):
    """The tiny pipeline profiled once on CPU with torch: (config, table dict, table path)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("profile")
    config = _config(root, reg)
    table = prof.profile(config, reg, batch_size=1, repeats=3, warmup=1, networks=8,
                         occurrences=1, device="cpu")
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


# --- a runtime with known times --------------------------------------------------------------

#: the stub's calibration: whole = SCALE * sum(parts) + PER_LAYER * layers + OFFSET
SCALE, PER_LAYER, OFFSET = 1.25, 0.03, 0.4


def _known_ms(key: str) -> float:
    """A distinct, reproducible time per part key (ms)."""
    return 0.05 + (sum(key.encode()) % 97) / 100


class StubRuntime(runtimes.Runtime):
    """Parts take :func:`_known_ms` of their key; a whole network the calibration's affine
    function of them, exactly; no clock is read."""

    name = "stub"

    def prepare(self, net, x, plan=None):
        return _StubNet(plan)


class _StubNet:
    def __init__(self, plan):
        self.plan, self.recorded = plan, []

    def run(self) -> float:
        parts = sum(_known_ms(k) for k in self.plan.keys)
        return SCALE * parts + PER_LAYER * self.plan.num_layers + OFFSET

    def run_parts(self, record=True):
        if record:
            self.recorded.append([_known_ms(k) for k in self.plan.keys])

    def part_times(self):
        return self.recorded


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory, reg):
    root = tmp_path_factory.mktemp("stub")
    config = _config(root, reg)
    table = prof.profile(config, reg, repeats=3, warmup=1, networks=10, occurrences=2,
                         device="cpu", runtime=StubRuntime())
    path = root / "stub.json"
    prof.write_table(path, table)
    return config, table, path


def test_stubbed_parts_are_the_table_and_the_fit_recovers_the_calibration(stubbed, reg):
    config, table, _ = stubbed
    entry = _entry(table)
    assert table["device"] == f"{runtimes.device_name('cpu')} [stub]" and entry["runtime"] == "stub"
    assert set(entry["ops"]) == _expected_keys(_ctx(config, reg))
    assert all(v == _known_ms(k) for part in ("ops", "fixed") for k, v in entry[part].items())
    cal = entry["calibration"]
    assert cal["scale"] == pytest.approx(SCALE, rel=1e-9)
    assert cal["per_layer_ms"] == pytest.approx(PER_LAYER, rel=1e-7)
    assert cal["offset_ms"] == pytest.approx(OFFSET, rel=1e-7)
    assert cal["networks"] == entry["networks"]["measured"] >= 10 and cal["dropped"] == []
    assert entry["networks"]["min_occurrences"] >= 2
    assert entry["networks"]["stable_share"] == 1.0  # constant figures: stable at min_repeats


def test_stubbed_prediction_equals_measurement(stubbed, reg):
    config, table, path = stubbed
    result = prof.check(config, reg, path, 6, seed=3, device="cpu", runtime=StubRuntime())
    assert result.runtime == "stub" and len(result.choices) == 6
    fitted = {tuple(c) for c in _entry(table)["calibration"]["choices"]}
    assert not fitted & set(result.choices)  # never checked on the networks fitted on
    for p, m in result.pairs:
        assert p == pytest.approx(m, rel=1e-9)
    assert result.drift == pytest.approx(1.0) and result.anchors == 5
    assert result.within(0.001) == 1.0 and result.median_abs_error() < 1e-6


def test_candidate_costs_are_calibrated_sums_of_the_table(stubbed, reg):
    config, table, path = stubbed
    entry = _entry(table)
    ops, fixed, cal = entry["ops"], entry["fixed"], entry["calibration"]
    a, b, c = cal["scale"], cal["per_layer_ms"], cal["offset_ms"]
    ctx = _ctx(config, reg)
    model = Latency(LatencyConfig(table=path))  # the table's only entry: the stub's
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    in_chs = 8
    for spec in blocks:
        cands = ctx.plugins.space.candidates(spec)
        width = cands[0].arch[0].split("_c")[1].split("_")[0]
        costs = model.candidate_costs(ctx, spec, cands)
        for cand, cost in zip(cands, costs, strict=True):
            raw = ops[f"{cand.arch[0]}@{in_chs}x{spec.in_size}|b1"] + sum(
                ops[f"{x}@{width}x{spec.out_size}:inner|b1"] for x in cand.arch[1:])
            assert cost == pytest.approx(a * raw + b * len(cand.arch), rel=1e-12)
        in_chs = int(width)
    assert model.fixed_cost(ctx, blocks) == pytest.approx(a * sum(fixed.values()) + c)


def test_calibration_fit_drops_an_outlier_and_keeps_costs_non_negative():
    rng = np.random.default_rng(0)
    raw = rng.uniform(1, 3, 12)
    layers = rng.integers(3, 7, 12)
    y = 1.1 * raw + 0.02 * layers + 0.3
    y[4] *= 1.5  # one network timed while the machine was busy
    cal = prof.fit_calibration(raw, layers, y)
    assert cal["dropped"] == [4] and cal["networks"] == 11
    assert (cal["scale"], cal["per_layer_ms"], cal["offset_ms"]) == pytest.approx(
        (1.1, 0.02, 0.3), rel=1e-6)
    # per-layer overhead never negative, so no candidate can cost less than nothing
    cal = prof.fit_calibration(raw, layers, 1.1 * raw - 0.05 * layers + 1)
    assert cal["per_layer_ms"] >= 0 and cal["scale"] > 0


# --- the protocol ----------------------------------------------------------------------------

def _series(values):
    """A step function returning figure "a"'s next value per timed step (warm-up: 999)."""
    calls = []

    def step(t):
        calls.append(t)
        return {"a": values[len(calls) - 1]}

    return step, calls


def test_protocol_stops_once_stable_and_at_its_cap():
    p = timing.Protocol(warmup=2, min_repeats=4, max_repeats=20, tolerance=0.02, check_every=2)
    # constant after warm-up: stable at min_repeats; the 2 warm-up values are discarded
    step, calls = _series([999, 999] + [1.0] * 30)
    got = timing.run_protocol(step, p)["a"]
    assert calls == [0, 1, 2, 3, 4, 5] and (got.ms, got.repeats, got.stable) == (1.0, 4, True)
    # odd and even calls disagree by 10 %: never stable, stops at the cap
    step, calls = _series([999, 999] + [1.0, 1.1] * 20)
    got = timing.run_protocol(step, p)["a"]
    assert got.repeats == 20 and not got.stable and got.spread == pytest.approx(0.1)
    # noisy first, then steady: checked at 4, 6, 8, ... calls; stops at the first stable check
    values = [999, 999, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0] + [1.0] * 20
    step, calls = _series(values)
    got = timing.run_protocol(step, timing.Protocol(warmup=2, min_repeats=4, max_repeats=20,
                                                    tolerance=0.02, check_every=2,
                                                    statistic="median"))["a"]
    assert got.repeats == 6 and got.stable and got.ms == 1.0
    # the minimum: stable once the odd and the even calls reach the same floor
    step, _ = _series([999, 999, 3.0, 2.0, 1.0, 5.0, 4.0, 1.0] + [9.0] * 20)
    got = timing.run_protocol(step, attrs.evolve(p, statistic="min"))["a"]
    assert (got.ms, got.repeats) == (1.0, 6)
    # the default, the fastest quarter: a busy machine's slow calls do not move it
    busy = [3.0 if i % 3 == 0 else 1.0 for i in range(20)]
    step, _ = _series([999, 999, *busy])
    got = timing.run_protocol(step, p)["a"]
    assert (got.ms, got.repeats, got.stable) == (1.0, 4, True)
    assert timing.statistic(busy[:4], "median") == 2.0


def test_protocol_spread_and_bad_values():
    assert timing.statistic([5, 1, 2, 8, 3, 9, 4, 7], "fast-quarter") == 1.5  # median of 1, 2
    assert timing.statistic([5, 1, 2, 8, 3, 9, 4, 7], "median") == 4.5
    assert timing.statistic([5, 1, 2], "min") == 1 and timing.fastest([5, 1, 2], "min") == [1]
    assert timing.spread([1.0, 2.0, 1.0, 2.0], "median") == pytest.approx(1 / 1.5)
    assert timing.spread([1.0, 1.0], "min") == 0.0 and math.isinf(timing.spread([1.0], "min"))
    assert not timing.stable([1.0] * 3, timing.Protocol(min_repeats=4))
    assert timing.stable([1.0] * 5, timing.Protocol(min_repeats=4, max_repeats=5))
    for kwargs, line in (({"statistic": "mean"},
                          "--statistic: one of fast-quarter, median, min, got 'mean'"),
                         ({"tolerance": 1.5}, "--tolerance: must be in [0, 1), got 1.5"),
                         ({"repeats": 0}, "--repeats: must be >= 1, got 0")):
        with pytest.raises(dnax.ConfigError) as e:
            prof.make_protocol(**{"repeats": 5, "warmup": 1, **kwargs})
        assert e.value.problems == [line]


def test_table_records_the_protocol(measured):
    _, table, _ = measured
    entry = _entry(table)
    p = entry["protocol"]
    assert p == {"warmup": 1, "min_repeats": 3, "max_repeats": 3, "tolerance": 0.02,
                 "statistic": "fast-quarter", "check_every": 5, "interleaved": True,
                 "rewarm": True, "threads": 1, "allocator": timing.warm_allocator()}
    assert timing.Protocol.from_dict(p).max_repeats == 3
    assert entry["runtime"] == "torch" and entry["torch"] == torch.__version__
    assert len(entry["load_average"]) == 3


# --- the table and the cost model --------------------------------------------------------------

def test_profile_covers_every_distinct_op(measured, reg):
    config, table, path = measured
    assert table["format"] == latency.KIND and table["device"] == runtimes.device_name("cpu")
    entry = _entry(table)
    assert (entry["batch_size"], entry["resolution"], entry["threads"]) == (1, 32, 1)
    expected = _expected_keys(_ctx(config, reg))
    assert len(expected) == 3 * (4 + 4)  # per block: 4 first-layer ops, 4 inner ops
    assert set(entry["ops"]) == expected
    assert all(math.isfinite(v) and v > 0 for v in entry["ops"].values())
    assert sorted(k.split(":")[0] for k in entry["fixed"]) == ["head", "stem"]
    assert entry["calibration"]["scale"] > 0 and entry["networks"]["min_occurrences"] >= 1
    assert json.loads(path.read_text()) == table  # written as returned


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


def test_old_or_uncalibrated_tables_are_refused_in_one_line(measured, tmp_path):
    _, table, _ = measured
    old = {**table, "format_version": 1}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(dnax.ArtifactError) as e:
        latency.read_table(path)
    assert e.value.problems == [f"{path}: latency table version 1, this dnax reads 2; re-run "
                                "`dnax profile`"]
    bare = json.loads(json.dumps(table))
    del _entry(bare)["calibration"]["scale"]
    path.write_text(json.dumps(bare))
    with pytest.raises(dnax.ArtifactError, match=r"old\.json: malformed latency table .*scale"):
        latency.read_table(path)
    path.write_text(json.dumps(old))
    prof.write_table(path, table)  # a table of an older version is replaced
    assert latency.read_table(path) == table


def test_tables_of_several_devices_and_runtimes(measured, tmp_path):
    _, table, _ = measured
    name = table["device"]
    slow = {**_entry(table), "device": "Slow NPU",
            "ops": {k: 2 * v for k, v in _entry(table)["ops"].items()}}
    ort = {**_entry(table), "runtime": "onnxruntime"}
    path = tmp_path / "two.json"
    prof.write_table(path, {**table, "device": "Slow NPU", "devices": {"Slow NPU": slow}})
    prof.write_table(path, {**table, "device": f"{name} [onnxruntime]",
                            "devices": {f"{name} [onnxruntime]": ort}})
    merged = prof.write_table(path, table)  # the CPU's torch entry added, the others kept
    assert set(merged["devices"]) == {name, "Slow NPU", f"{name} [onnxruntime]"}
    assert merged["device"] == name
    assert Latency(LatencyConfig(table=path)).entry[0] == name
    assert Latency(LatencyConfig(table=path, device="Slow NPU")).entry[1] == slow
    assert Latency(LatencyConfig(table=path, device=name)).entry[0] == name  # torch first
    assert Latency(LatencyConfig(table=path, device=f"{name} [onnxruntime]")).entry[1] == ort
    assert latency.device_entry(merged, None, path, "onnxruntime")[1] == ort
    assert latency.device_entry(merged, name, path, "onnxruntime")[0] == f"{name} [onnxruntime]"
    with pytest.raises(dnax.ArtifactError, match="no measurements for device 'TPU'"):
        _ = Latency(LatencyConfig(table=path, device="TPU")).entry
    with pytest.raises(dnax.ArtifactError,
                       match="no measurements for device 'Slow NPU' with runtime 'onnxruntime'"):
        latency.device_entry(merged, "Slow NPU", path, "onnxruntime")
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
    ctx.results = {"teacher": types.SimpleNamespace(blocks=tuple(blocks))}
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
    # complete: the timm arch def of the chosen candidates' own layers, stage by stage
    searched = sel.arch_def[len(sel.arch_def) - len(blocks):]
    assert [list(s) for s in searched] == [list(r.candidates[i].arch)
                                           for r, i in zip(rankings, sel.candidates, strict=True)]
    # the selector's prediction is the check's prediction of that network
    assert prof.network_cost(model, ctx, blocks, sel.candidates) == pytest.approx(predicted)


def test_pipeline_with_latency_costs(tmp_path, reg):
    toml = tmp_path / "p.toml"
    toml.write_text(PIPELINE + COSTS)
    with pytest.raises(dnax.ConfigError, match=r"costs\[0\]\.table: no such file.*dnax profile"):
        dnax.load_pipeline(toml, reg)
    config = prof.load_for_profile(toml, reg)  # profiling ignores [[costs]] and [selector]
    assert set(config.sections) == {"data", "teacher", "space"} and not config.costs
    table = prof.profile(config, reg, repeats=1, warmup=0, networks=4, occurrences=1,
                         device="cpu", runtime=StubRuntime())
    prof.write_table(tmp_path / "tables" / "lat.json", table)
    full = dnax.load_pipeline(toml, reg)
    assert full.costs[0].config.table == (tmp_path / "tables" / "lat.json").resolve()
    assert full.sections["selector"].config.budgets == {"latency": 5.0}


# --- the check -------------------------------------------------------------------------------

def test_check_predicts_each_network_from_the_table(measured, reg):
    config, _, path = measured
    result = prof.check(config, reg, path, 4, seed=1, device="cpu", repeats=2, warmup=1)
    assert len(result.pairs) == 4 and len(set(result.choices)) == 4
    assert all(math.isfinite(p) and math.isfinite(m) and p > 0 and m > 0
               for p, m in result.pairs)
    assert -1 <= result.spearman <= 1 and -1 <= result.kendall <= 1
    assert result.anchors == 5 and result.drift > 0 and len(result.load) == 3
    ctx = _ctx(config, reg)
    model = Latency(LatencyConfig(table=path))
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    for choice, predicted in zip(result.choices, result.predicted, strict=True):
        parts = [model.candidate_costs(ctx, b, [ctx.plugins.space.candidates(b)[i]])[0]
                 for b, i in zip(blocks, choice, strict=True)]
        assert predicted == pytest.approx(model.fixed_cost(ctx, blocks) + sum(parts))


def test_check_statistics_match_scipy():
    from scipy import stats as sstats

    rng = np.random.default_rng(2)
    measured = rng.uniform(1, 5, 25)
    predicted = measured * rng.uniform(0.85, 1.15, 25)
    r = prof.CheckResult("cpu", tuple((i,) for i in range(25)), tuple(predicted),
                         tuple(measured), drift=1.05)
    err = 100 * (predicted - measured) / measured
    assert r.errors == pytest.approx(tuple(err))
    assert r.within(10) == pytest.approx(np.mean(np.abs(err) <= 10))
    assert r.median_abs_error() == pytest.approx(np.median(np.abs(err)))
    assert r.worst_error() == pytest.approx(err[np.argmax(np.abs(err))])
    assert r.spearman == pytest.approx(sstats.spearmanr(predicted, measured).statistic)
    assert r.kendall == pytest.approx(sstats.kendalltau(predicted, measured).statistic)
    adj = 100 * (predicted - measured / 1.05) / (measured / 1.05)
    assert r.errors_pct(adjusted=True) == pytest.approx(tuple(adj))
    assert r.within(10, adjusted=True) == pytest.approx(np.mean(np.abs(adj) <= 10))


def test_rank_correlations():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert prof.spearman(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert prof.kendall(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(prof.spearman(x, [1.0] * 5)) and math.isnan(prof.kendall(x, [1.0] * 5))
    # ties: tau-b and average ranks, as scipy computes them
    a, b = [1, 2, 2, 3, 5, 4, 7], [2, 1, 3, 3, 6, 8, 7]
    assert prof.kendall(a, b) == pytest.approx(0.65)
    assert prof.spearman(a, b) == pytest.approx(0.8090909090909091)


@pytest.mark.slow
def test_real_check_is_loosely_close(reg, tmp_path):
    """The one real timing bound, loose: a table measured here predicts held-out networks of
    the tiny space within a factor 2, and ranks them better than chance."""
    config = _config(tmp_path, reg)
    table = prof.profile(config, reg, repeats=15, warmup=2, networks=12, occurrences=2,
                         device="cpu")
    path = tmp_path / "lat.json"
    prof.write_table(path, table)
    result = prof.check(config, reg, path, 8, seed=5, device="cpu")
    assert all(0.5 < p / m < 2 for p, m in result.pairs), result.pairs
    assert result.spearman > 0


# --- onnxruntime ----------------------------------------------------------------------------

def test_onnxruntime_parts_from_its_profile():
    plan = runtimes.Plan((0, 0), (("ds",), ("a", "b"), ("c",)), 1, (2, 1),
                         ("s", "a", "b", "c", "h"))
    node = lambda ts, name, dur: {"cat": "Node", "ts": ts, "dur": dur,  # noqa: E731
                                  "name": f"{name}_kernel_time"}
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              node(1, "/conv_stem/Conv", 10), node(2, "/blocks/blocks.0/blocks.0.0/conv/Conv", 5),
              node(3, "ReorderInput", 1), node(4, "/blocks/blocks.1/blocks.1.0/conv_pw/Conv", 7),
              node(5, "ReorderOutput_token_3", 2),
              node(6, "/blocks/blocks.1/blocks.1.1/se/Mul", 3),
              node(7, "/blocks/blocks.2/blocks.2.0/conv_pwl/Conv", 4),
              node(8, "/conv_head/Conv", 6), node(9, "/classifier/Gemm", 2),
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
              node(201, "ReorderInput_token_1", 1), node(202, "/global_pool/pool/Pool", 8)]
    got = runtimes.ort_part_times(events, plan)
    assert got == [pytest.approx([0.016, 0.009, 0.003, 0.004, 0.008]),
                   pytest.approx([0.001, 0, 0, 0, 0.008])]


@pytest.mark.slow
def test_onnxruntime_runtime(tmp_path, reg):
    pytest.importorskip("onnxruntime")
    config = _config(tmp_path, reg)
    table = prof.profile(config, reg, repeats=2, warmup=1, networks=3, occurrences=1,
                         device="cpu", runtime="onnxruntime")
    name = runtimes.device_name("cpu")
    entry = _entry(table)
    assert table["device"] == f"{name} [onnxruntime]" and entry["runtime"] == "onnxruntime"
    assert entry["onnxruntime"] and entry["threads"] == 1
    assert set(entry["ops"]) == _expected_keys(_ctx(config, reg))
    assert all(v >= 0 for v in entry["ops"].values()) and entry["calibration"]["scale"] > 0
    path = tmp_path / "lat.json"
    prof.write_table(path, table)
    result = prof.check(config, reg, path, 2, seed=1, device="cpu", runtime="onnxruntime",
                        repeats=2, warmup=1)
    assert result.runtime == "onnxruntime" and result.device == f"{name} [onnxruntime]"
    assert all(p > 0 and m > 0 for p, m in result.pairs)
    with pytest.raises(dnax.ConfigError) as e:
        prof.profile(config, reg, device="cpu", runtime="tvm")
    assert e.value.problems == ["--runtime: one of torch, onnxruntime, got 'tvm'"]


# --- the command -----------------------------------------------------------------------------

def _app(reg, monkeypatch):
    from dnax.cli.common import user_errors
    from dnax.cli.profile import profile_command

    monkeypatch.setattr("dnax.cli.profile.get_registry", lambda: reg)
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        """dnax"""

    app.command("profile")(user_errors(profile_command))
    return app


def test_profile_command(tmp_path, reg, monkeypatch):
    app = _app(reg, monkeypatch)
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE)
    cli = CliRunner()
    args = ["profile", str(toml), "--repeats", "2", "--warmup", "1", "--networks", "6",
            "--occurrences", "1", "--check", "3", "--threads", "1", "--max-error", "1000"]
    res = cli.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    written = Path(data["table"])
    assert written == tmp_path / f"latency-{prof.slug(runtimes.device_name('cpu'))}.json"
    assert data["ops"] == 24 and len(data["check"]["networks"]) == 3
    assert data["runtime"] == "torch" and data["protocol"]["max_repeats"] == 2
    c = data["check"]
    assert set(c) >= {"within_pct", "median_abs_error_pct", "worst_error_pct", "spearman",
                      "kendall", "drift", "adjusted", "ok"} and c["ok"]
    assert set(latency.read_table(written)["devices"]) == {data["device"]}
    res = cli.invoke(app, [*args, "--check-only"])
    assert res.exit_code == 0, res.output
    assert "protocol" in res.stdout and "Spearman" in res.stdout and "drift" in res.stdout
    res = cli.invoke(app, ["profile", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"error: {tmp_path / 'nope.toml'}: no such pipeline file")
    res = cli.invoke(app, ["profile", str(toml), "--statistic", "mean"])
    assert res.exit_code == 2 and res.stderr.strip() == (
        "error: --statistic: one of fast-quarter, median, min, got 'mean'")


def test_check_warns_and_strict_fails_above_max_error(tmp_path, reg, monkeypatch, stubbed):
    app = _app(reg, monkeypatch)
    table = stubbed[1]
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE)
    out = tmp_path / "lat.json"
    prof.write_table(out, table)
    bad = prof.CheckResult(table["device"], ((0, 0, 0), (1, 1, 1), (2, 2, 2)), (1.0, 2.0, 3.0),
                           (1.0, 2.5, 3.05), "stub", (True, True, True), (1.0, 1.0, 1.0))
    monkeypatch.setattr(prof, "check", lambda *a, **k: bad)
    base = ["profile", str(toml), "-o", str(out), "--check", "3", "--check-only", "--runtime",
            "stub", "--json"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0 and res.stderr.startswith(
        "warning: 1 of 3 networks (33 %) are more than 10 % off their predicted latency "
        "(worst -20.0 %")
    assert res.stderr.count("\n") == 1
    assert json.loads(res.stdout)["check"]["ok"] is False
    res = CliRunner().invoke(app, [*base, "--strict"])
    assert res.exit_code == 1
    res = CliRunner().invoke(app, [*base, "--strict", "--max-error", "25"])
    assert res.exit_code == 0 and res.stderr == ""


# --- the retrained network -----------------------------------------------------------------

def test_retrainer_reports_measured_latency_beside_prediction_and_budget(measured, reg):
    from dnax.plugins.retrainers.timm_retrainer import latency_metrics

    config, table, path = measured
    ctx = _ctx(config, reg)
    model = Latency(LatencyConfig(table=path))
    ctx.plugins = attrs.evolve(ctx.plugins, costs=(model,))
    blocks = ctx.plugins.teacher.blocks(ctx.resolution)
    walker = prof.Walker(ctx, blocks, 1)
    choice = (0, 5, 19)
    net = walker.build(walker.plan(choice))
    predicted = prof.network_cost(model, ctx, blocks, choice)
    selection = dnax.Selection(choice, 0.1, {"latency": predicted}, {"latency": 9.0})
    got = latency_metrics(ctx, selection, net)
    assert got["latency_predicted_ms"] == predicted and got["latency_budget_ms"] == 9.0
    assert got["latency_measured_ms"] > 0
    # a table of another machine: prediction and budget only
    other = json.loads(json.dumps(table))
    _entry(other)["device"] = "Some Other CPU"
    elsewhere = path.parent / "other.json"
    elsewhere.write_text(json.dumps(other))
    ctx.plugins = attrs.evolve(ctx.plugins, costs=(Latency(LatencyConfig(table=elsewhere)),))
    assert set(latency_metrics(ctx, selection, net)) == {"latency_predicted_ms",
                                                          "latency_budget_ms"}
    # no latency cost model: nothing
    ctx.plugins = attrs.evolve(ctx.plugins, costs=())
    assert latency_metrics(ctx, selection, net) == {}
