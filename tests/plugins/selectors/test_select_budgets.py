"""Selection under three budgets at once: the core solver against HiGHS at the paper's size, its
time-limit path, and a digits pipeline budgeted in params, FLOPs and latency against brute force.
"""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import tomli_w
import torch
from paths import EXAMPLES

import dnax
from dnax.plugins.measure import profile as prof
from dnax.plugins.measure.bench_select import highs_optimum, synthetic_problem
from dnax.plugins.selectors import pareto
from dnax.registry import get_registry

DIGITS = EXAMPLES / "digits.toml"
METRICS = ("params", "flops", "latency")


def _quick_digits(limit: int) -> dict:
    """The digits example on CPU, one thread, ``limit`` images, one epoch per stage."""
    config = tomllib.loads(DIGITS.read_text())
    config["pipeline"] |= {"device": "cpu", "threads": 1}
    config["data"]["limit"] = limit
    config["teacher"]["epochs"] = 1
    config["trainer"]["epochs"] = 1
    config["evaluator"]["batches"] = 2
    return config


def _paper(seed: int, tightness: float):
    scores, raw = synthetic_problem(seed)
    costs = [np.stack([c[m] for m in METRICS], axis=1) for c in raw]
    lo, hi = sum(c.min(axis=0) for c in costs), sum(c.max(axis=0) for c in costs)
    return scores, costs, lo + tightness * (hi - lo)


def _feasible(costs, budgets, choice) -> bool:
    total = sum(c[i] for c, i in zip(costs, choice, strict=True))
    return bool((total <= budgets).all())


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "tightness"), [(0, 0.3), (11, 0.5)])
def test_three_budgets_at_the_paper_size_equal_highs(seed, tightness):
    scores, costs, budgets = _paper(seed, tightness)
    sol = pareto.solve(scores, costs, budgets, top_k=5)
    ref, _ = highs_optimum(scores, costs, budgets)
    assert sol.method == "core" and sol.optimal and sol.gap == 0.0
    assert sol.top[0].score == pytest.approx(ref, rel=1e-9)
    assert len(sol.top) == 5 and len({n.choice for n in sol.top}) == 5
    assert [n.score for n in sol.top] == sorted(n.score for n in sol.top)
    for net in sol.top:
        assert _feasible(costs, budgets, net.choice)
        assert net.score == pytest.approx(sum(s[i] for s, i in zip(scores, net.choice,
                                                                    strict=True)), abs=1e-12)


@pytest.mark.slow
def test_time_limit_returns_the_best_found_with_a_proven_gap():
    """Past the limit (here: at once, after the first pass) the answer is feasible, not proven,
    and the optimum (HiGHS) lies between the proven lower bound and the returned score."""
    scores, costs, budgets = _paper(0, 0.3)  # its first pass does not prove the optimum
    messages = []
    sol = pareto.solve(scores, costs, budgets, top_k=1, time_limit=1e-9,
                       progress=lambda m, lb: messages.append((m, lb)))
    ref, _ = highs_optimum(scores, costs, budgets)
    assert not sol.optimal and sol.gap > 0 and len(messages) == 1
    assert _feasible(costs, budgets, sol.top[0].choice)
    assert sol.lower_bound <= ref + 1e-9 <= sol.top[0].score + 2e-9
    assert sol.gap == pytest.approx((sol.top[0].score - sol.lower_bound) / sol.top[0].score)
    full = pareto.solve(scores, costs, budgets, top_k=1)
    assert full.optimal and full.top[0].score == pytest.approx(ref, rel=1e-9)


@pytest.mark.slow
def test_digits_pipeline_under_params_flops_and_latency(tmp_path):
    """The digits example (1 epoch per stage) with a measured latency table and a budget on
    each of params, FLOPs and latency: its selection is the brute-force best of all 160,000
    networks under the three budgets, read from the stored rankings and costs."""
    config = _quick_digits(limit=600)
    config["costs"] = [{"plugin": "params"}, {"plugin": "flops"},
                       {"plugin": "latency", "table": "latency.json"}]
    config["selector"] = {"plugin": "exact", "top_k": 3}
    toml = tmp_path / "digits.toml"
    toml.write_text(tomli_w.dumps(config))
    registry = get_registry()
    before = torch.get_num_threads()
    try:
        table = prof.profile(prof.load_for_profile(toml, registry), registry, repeats=2,
                             warmup=1, device="cpu")
    finally:
        torch.set_num_threads(before)
    prof.write_table(tmp_path / "latency.json", table)
    # budgets at 40 % of each cost's range, from an unbudgeted run's stored costs
    run = dnax.run_pipeline(toml, tmp_path / "run", until="select")
    rankings, fixed = run.rankings(), run.fixed_costs
    lo = {m: fixed[m] + sum(r.costs[m].min() for r in rankings) for m in METRICS}
    hi = {m: fixed[m] + sum(r.costs[m].max() for r in rankings) for m in METRICS}
    budgets = {m: float(lo[m] + 0.4 * (hi[m] - lo[m])) for m in METRICS}
    config["selector"]["budgets"] = budgets
    toml.write_text(tomli_w.dumps(config))
    run = dnax.run_pipeline(toml, tmp_path / "run", until="select", rerun=True)
    sel = run.selection
    assert sel is not None and sel.optimal and sel.budgets == budgets
    # brute force over every network: (20,) x (20,) x ... broadcast to the whole grid
    rankings = run.rankings()
    n = len(rankings)

    def grid(values):
        return sum(np.asarray(v, dtype=float).reshape([-1 if k == i else 1 for k in range(n)])
                   for i, v in enumerate(values))

    ok = np.ones([len(r.candidates) for r in rankings], dtype=bool)
    for m in METRICS:
        ok &= fixed[m] + grid([r.costs[m] for r in rankings]) <= budgets[m]
    score = np.where(ok, grid([r.scores["nmae"] for r in rankings]), np.inf)
    best = float(score.min())
    best_choice = np.unravel_index(int(score.argmin()), score.shape)
    assert ok.size == 20 ** 4 and 0 < ok.sum() < ok.size  # the budgets bind
    assert best_choice is not None
    assert sel.score == pytest.approx(best, rel=1e-9)
    assert all(sel.costs[m] <= budgets[m] * (1 + 1e-12) for m in METRICS)


def _grid_brute_force(rankings, fixed, budgets, key="nmae"):
    """The best score and choice over every network, with 2-D costs read in the row the
    previous block's chosen cell width selects (rows: its distinct widths, ascending)."""
    best, best_choice = np.inf, None
    sizes = [len(r.candidates) for r in rankings]
    widths = [np.array(r.cell_widths)[[c.cell for c in r.candidates]] for r in rankings]
    for choice in np.ndindex(*sizes):
        ok = True
        for m, limit in budgets.items():
            total = fixed[m]
            for k, (r, i) in enumerate(zip(rankings, choice, strict=True)):
                a = np.asarray(r.costs[m])
                if a.ndim == 1:
                    total += a[i]
                else:
                    rows = sorted(set(rankings[k - 1].cell_widths))
                    total += a[rows.index(widths[k - 1][choice[k - 1]]), i]
            ok &= total <= limit
        if ok:
            score = sum(float(r.scores[key][i]) for r, i in zip(rankings, choice, strict=True))
            if score < best:
                best, best_choice = score, choice
    return best, best_choice


@pytest.mark.slow
def test_digits_with_cells_of_two_widths_end_to_end(tmp_path):
    """Block 1 of the digits example offers a 1-layer cell of 32 channels and a 2-layer cell of
    40: the run ends with a retrained network; the selection is the brute-force best under the
    params budget with block 2's costs read for the width chosen before it, and the exported
    network has exactly the predicted parameter count."""
    config = _quick_digits(limit=400)
    config["space"]["blocks"][1] = {"cells": [{"depth": 1, "width": 32},
                                              {"depth": 2, "width": 40}]}
    config["retrainer"] |= {"epochs": 1, "onnx": False}
    config["selector"] = {"plugin": "exact", "budgets": {"params": 80000.0}}
    toml = tmp_path / "digits.toml"
    toml.write_text(tomli_w.dumps(config))
    run = dnax.run_pipeline(toml, tmp_path / "run")
    rankings, fixed, sel = run.rankings(), run.fixed_costs, run.selection
    assert rankings[1].cell_widths == (32, 40)
    assert np.asarray(rankings[2].costs["params"]).shape == (2, 20)  # one row per width
    best, choice = _grid_brute_force(rankings, fixed, {"params": 80000.0})
    assert choice is not None and sel.score == pytest.approx(best, rel=1e-9)
    model = dnax.load_model(tmp_path / "run" / "model")
    assert sum(p.numel() for p in model.parameters()) == sel.costs["params"] <= 80000
