"""The exact selector: proof against brute force, infeasible budgets, the plugin, the benchmark."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_force

import dnax
from dnax.plugins.measure.bench_select import bench_select, synthetic_problem
from dnax.plugins.selectors import pareto
from dnax.plugins.selectors.exact import Exact, ExactConfig, normalise
from standins import SelectorContext


@st.composite
def instances(draw):
    """Small problems with integer scores and costs, so that ties are frequent and exact."""
    m = draw(st.integers(0, 3))
    blocks = draw(st.integers(1, 3))
    scores, costs = [], []
    for _ in range(blocks):
        n = draw(st.integers(1, 6))
        scores.append(np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
                               dtype=float))
        flat = draw(st.lists(st.integers(0, 5), min_size=n * m, max_size=n * m))
        costs.append(np.array(flat, dtype=float).reshape(n, m))
    budgets = np.array(draw(st.lists(st.integers(0, 5 * blocks), min_size=m, max_size=m)),
                       dtype=float)
    return scores, costs, budgets, draw(st.integers(1, 6))


def _front(points: np.ndarray) -> list[tuple[float, ...]]:
    """The distinct points no other point beats (sorted): in lexicographic order a point's
    dominators all come before it, so one pass against the front so far finds them."""
    front = np.empty((0, points.shape[1]))
    for p in np.unique(points, axis=0):
        if not (front <= p).all(axis=1).any():
            front = np.vstack([front, p])
    return sorted(map(tuple, front))


@settings(max_examples=200, deadline=None)
@given(instances())
def test_exact_against_brute_force(inst):
    scores, costs, budgets, k = inst
    _, sc, co = brute_force(scores, costs, budgets)
    if len(sc) == 0:
        with pytest.raises(dnax.NoFeasibleNetworkError, match="no network fits"):
            pareto.solve(scores, costs, budgets, top_k=k)
        return
    sol = pareto.solve(scores, costs, budgets, top_k=k)
    # the k best scores, ties included
    assert [n.score for n in sol.top] == sorted(sc)[:k]
    assert len({n.choice for n in sol.top}) == len(sol.top)
    for net in sol.top:
        assert net.score == sum(s[i] for s, i in zip(scores, net.choice, strict=True))
        total = sum(c[i] for c, i in zip(costs, net.choice, strict=True))
        assert np.array_equal(total, net.costs) and (total <= budgets).all()
    # one or two budgets: the whole front of feasible networks, one network per distinct
    # (score, costs); three or more: the front of the top networks
    got = sorted((n.score, *n.costs) for n in sol.front)
    if len(budgets) <= 2:
        assert sol.method == "pareto" and got == _front(np.column_stack([sc, co]))
    else:
        assert sol.method == "core" and sol.optimal
        assert got == _front(np.array([(n.score, *n.costs) for n in sol.top]))


@st.composite
def wide_instances(draw):
    """Up to 4 blocks of up to 7 candidates, 1 to 3 budgets on different scales, scores that
    fall as costs rise (so the budgets bind and the multipliers are not 0) and ``k`` up to 12,
    often more than the feasible networks: the Lagrangian top-k path."""
    m = draw(st.integers(1, 3))
    blocks = draw(st.integers(2, 4))
    unit = np.array(draw(st.lists(st.sampled_from([1.0, 1e3, 1e6]), min_size=m, max_size=m)))
    fine = draw(st.booleans())  # sevenths (rounding: fronts not compared) or integers (ties)
    scores, costs = [], []
    for _ in range(blocks):
        n = draw(st.integers(1, 7))
        c = np.array(draw(st.lists(st.integers(0, 6), min_size=n * m, max_size=n * m)),
                     dtype=float).reshape(n, m)
        noise = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=float)
        s = 6 * m - c.sum(axis=1) + noise
        scores.append(s / 7 if fine else s)
        costs.append(c * unit)
    lo, hi = sum(c.min(axis=0) for c in costs), sum(c.max(axis=0) for c in costs)
    where = np.array(draw(st.lists(st.integers(0, 10), min_size=m, max_size=m))) / 10
    return scores, costs, np.round(lo + where * (hi - lo)), draw(st.integers(1, 12)), fine


def _check(scores, costs, budgets, ks, front=True):
    """``solve`` equals brute force for each k: the k best scores (ties included), and the
    whole front (unless rounding makes sums in another order differ)."""
    _, sc, co = brute_force(scores, costs, budgets)
    if len(sc) == 0:
        for k in ks:
            with pytest.raises(dnax.NoFeasibleNetworkError, match="no network fits"):
                pareto.solve(scores, costs, budgets, top_k=k)
        return
    want_front = _front(np.column_stack([sc, co])) if front else None
    for k in ks:
        sol = pareto.solve(scores, costs, budgets, top_k=k)
        want = np.sort(sc)[:k]
        assert len(sol.top) == len(want)
        assert np.allclose([n.score for n in sol.top], want, rtol=0, atol=1e-12)
        assert len({n.choice for n in sol.top}) == len(sol.top)
        for net in sol.top:
            assert net.score == pytest.approx(sum(s[i] for s, i in zip(scores, net.choice,
                                                                       strict=True)), abs=1e-12)
            total = sum(c[i] for c, i in zip(costs, net.choice, strict=True))
            assert np.array_equal(total, net.costs) and (total <= budgets).all()
        if want_front is not None:
            got = np.array(sorted((n.score, *n.costs) for n in sol.front))
            if len(budgets) >= 3:  # three or more budgets: the front of the top networks
                want_front = _front(np.array([(n.score, *n.costs) for n in sol.top]))
            assert np.allclose(got, want_front, rtol=0, atol=1e-9)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(wide_instances())
def test_top_k_against_brute_force(inst):
    scores, costs, budgets, k, fine = inst
    _check(scores, costs, budgets, [k], front=not fine)


@pytest.mark.parametrize("metrics", [("params",), ("flops",), ("params", "flops")])
@pytest.mark.parametrize("tightness", [0.05, 0.3, 0.6, 0.95])
def test_realistic_tables_against_brute_force(metrics, tightness):
    """MBConv-like tables (scores falling with size plus noise), 9,072 networks: top-k for
    several k and the front equal brute force."""
    shapes = ((16, 24, 2, 112), (24, 40, 2, 56), (40, 80, 2, 28), (80, 112, 1, 14))
    scores, raw = synthetic_problem(1, depths=((1,), (1, 2), (1,), (1,)), shapes=shapes)
    costs = [np.stack([c[m] for m in metrics], axis=1) for c in raw]
    lo, hi = sum(c.min(axis=0) for c in costs), sum(c.max(axis=0) for c in costs)
    _check(scores, costs, lo + tightness * (hi - lo), [1, 2, 5, 17])


def _layer_numbers(S, C):
    """Brute force: a point's layer is 1 + the longest chain of points dominating it."""
    pts = np.column_stack([C, S])
    order = np.lexsort(pts.T[::-1])
    layer = np.zeros(len(S), dtype=int)
    for a, i in enumerate(order):
        below = [layer[j] for j in order[:a] if (pts[j] <= pts[i]).all()]
        layer[i] = 1 + max(below, default=0)
    return layer


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.integers(1, 4), st.integers(0, 400), st.integers(1, 9),
       st.integers(0, 2 ** 32 - 1))
def test_layers_against_brute_force(m, k, n, top, seed):
    """Enough points for the staircase sweep (and its fallback when most are undominated)."""
    rng = np.random.default_rng(seed)
    C = rng.integers(0, top, (n, m)).astype(float)
    S = rng.integers(0, top, n).astype(float)
    if m and seed % 3 == 0:  # anti-correlated: most points undominated
        S = -C.sum(axis=1) + rng.integers(0, 2, n)
    keep = pareto._layers(S, C, k)
    want = _layer_numbers(S, C) <= k
    pts = np.column_stack([C, S])
    assert sorted(map(tuple, pts[keep])) == sorted(map(tuple, pts[want]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 50), st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_undominated_2_against_dominated_2(n, top, anti, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, top, n).astype(float)
    s = -y + rng.integers(0, 2, n) if anti else rng.integers(0, top, n).astype(float)
    got = pareto._undominated_2(y, s)
    assert np.array_equal(got, ~pareto._dominated_2(y, s))
    if n <= 300:
        le = (y[None, :] <= y[:, None]) & (s[None, :] <= s[:, None]) & np.tri(n, k=-1, dtype=bool)
        assert np.array_equal(got, ~le.any(axis=1))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(3, 4), st.integers(1, 6), st.integers(0, 2 ** 32 - 1))
def test_undominated_n_against_brute_force(n, d, top, seed):
    """Short runs, so that the run-against-front check and the growing front are exercised."""
    rng = np.random.default_rng(seed)
    P = rng.integers(0, top, (n, d)).astype(float)
    P = P[np.lexsort(P.T[::-1])]
    le = (P[None] <= P[:, None]).all(axis=2) & np.tri(n, k=-1, dtype=bool)
    assert np.array_equal(pareto._undominated_n(P, most=16), ~le.any(axis=1))


def test_infeasible_budget_names_the_cheapest():
    scores = [np.array([1.0, 2.0]), np.array([0.5, 0.1])]
    costs = [np.array([[3.0], [5.0]]), np.array([[2.0], [4.0]])]
    with pytest.raises(dnax.NoFeasibleNetworkError) as e:
        pareto.solve(scores, costs, [4.0], names=["params"], fixed=[100.0])
    assert str(e.value) == "no network fits params <= 104: the cheapest costs 105"


def test_budgets_that_only_fail_together():
    scores = [np.array([0.0, 0.0])]
    costs = [np.array([[1.0, 9.0], [9.0, 1.0]])]
    with pytest.raises(dnax.NoFeasibleNetworkError, match="at once"):
        pareto.solve(scores, costs, [5.0, 5.0], names=["params", "flops"])


def test_normalise():
    s = np.array([3.0, 1.0, 2.0, 2.0, np.nan])
    assert np.allclose(normalise(s, "minmax")[:4], [1.0, 0.0, 0.5, 0.5])
    assert np.allclose(normalise(s, "rank")[:4], [1.0, 0.0, 0.5, 0.5])
    z = normalise(s, "zscore")[:4]
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    assert np.isnan(normalise(s, "none")[4])


_Ctx = SelectorContext


def _rankings(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b, n in enumerate((4, 7, 5)):
        cands = tuple(dnax.Candidate(b, i, 0, (i,), (f"op{i}",)) for i in range(n))
        params = rng.integers(10, 100, n).astype(float)
        flops = params * rng.uniform(5, 15, n)
        nmae = 1.0 / params + rng.normal(0, 0.002, n)
        out.append(dnax.BlockRanking(b, cands, {"nmae": nmae, "mse": nmae * 3},
                                     {"params": params, "flops": flops}))
    return out


@pytest.mark.parametrize("how", ["none", "minmax", "zscore", "rank"])
def test_selector_matches_brute_force_and_stores_front(tmp_path, how):
    rankings = _rankings()
    fixed = {"params": 50.0, "flops": 400.0}
    config = ExactConfig(budgets={"params": 200.0, "flops": 2500.0}, top_k=3, normalise=how)
    ctx = _Ctx(tmp_path)
    sel = Exact(config).select(ctx, rankings, fixed)

    scores = [normalise(r.scores["nmae"], how) for r in rankings]
    costs = [np.column_stack([r.costs["params"], r.costs["flops"]]) for r in rankings]
    _, sc, _ = brute_force(scores, costs, [150.0, 2100.0])
    assert sel.score == pytest.approx(sc.min(), abs=1e-12)
    for m in ("params", "flops"):
        want = fixed[m] + sum(r.costs[m][i] for r, i in zip(rankings, sel.candidates,
                                                            strict=True))
        assert sel.costs[m] == pytest.approx(want) and sel.costs[m] <= config.budgets[m]
    assert sel.budgets == config.budgets

    top = ctx.run_dir.read_json("selection/top.json", kind="top-k")
    assert [n["score"] for n in top["networks"]] == pytest.approx(sorted(sc)[:3])
    assert top["networks"][0]["candidates"] == list(sel.candidates)
    front = ctx.run_dir.read_json("selection/front.json", kind="pareto-front")
    assert len(front["candidates"]) == len(front["scores"]) == len(front["costs"]) >= 1
    assert min(front["scores"]) == pytest.approx(sel.score)
    assert all(c[0] <= 200.0 and c[1] <= 2500.0 for c in front["costs"])
    assert ctx.lines and "exact:" in ctx.lines[-1]


def test_selector_errors(tmp_path):
    rankings = _rankings()
    fixed = {"params": 50.0}
    with pytest.raises(dnax.ConfigError, match=r"budgets\.latency"):
        Exact(ExactConfig(budgets={"latency": 12.0})).select(_Ctx(tmp_path), rankings, fixed)
    with pytest.raises(dnax.ConfigError, match=r"\$\.selector\.key"):
        Exact(ExactConfig(key="top1")).select(_Ctx(tmp_path), rankings, fixed)
    with pytest.raises(dnax.NoFeasibleNetworkError, match="the cheapest costs"):
        Exact(ExactConfig(budgets={"params": 60.0})).select(_Ctx(tmp_path), rankings, fixed)


def test_selector_without_budgets_takes_each_blocks_best(tmp_path):
    rankings = _rankings(1)
    sel = Exact(ExactConfig()).select(_Ctx(tmp_path), rankings, {})
    assert sel.candidates == tuple(int(np.argmin(r.scores["nmae"])) for r in rankings)


def test_check_refuses_unknown_budget_metric(registry, pipeline):
    from dnax.plugins.selectors import exact
    from dnax.registry import Registry

    registry = Registry.create(entry_points=False, builtins=False,
                                     plugins=[*registry.pm.get_plugins(), exact])
    pipeline["selector"] = {"plugin": "exact", "budgets": {"latency": 10.0}}
    with pytest.raises(dnax.ConfigError, match=r"budgets\.latency: no \[\[costs\]\] model"):
        dnax.load_pipeline(pipeline, registry)
    pipeline["selector"] = {"plugin": "exact", "budgets": {"params": 116.0}, "top_k": 2}
    config = dnax.load_pipeline(pipeline, registry)
    assert config.sections["selector"].config.top_k == 2


def test_pipeline_selects_with_exact(registry, pipeline, tmp_path):
    """The whole pipeline (stand-in stages on real digits images) with the exact selector."""
    from dnax.plugins.selectors import exact
    from dnax.registry import Registry

    registry = Registry.create(entry_points=False, builtins=False,
                                     plugins=[*registry.pm.get_plugins(), exact])
    pipeline["selector"] = {"plugin": "exact", "budgets": {"params": 116.0}, "top_k": 3}
    run = dnax.run_pipeline(pipeline, tmp_path / "run", registry=registry)
    sel = run.selection
    assert sel is not None and sel.costs["params"] <= 116.0
    rankings = [run.ranking(b) for b in range(2)]
    # the stand-in params model: kernel sizes summed, plus 100 fixed
    costs = [np.array([[sum(int(a.split("_k")[1][0]) for a in c.arch)] for c in r.candidates],
                      dtype=float) for r in rankings]
    _, sc, _ = brute_force([r.scores["nmae"] for r in rankings], costs, [16.0])
    assert sel.score == pytest.approx(sc.min(), rel=1e-6)
    assert run.run_dir.exists("selection/front.json") and run.run_dir.exists("selection.json")


def test_paper_sized_problem():
    """2x10^17 networks: the solver's optimum never exceeds the budget and top-1 agrees with the
    best of top-5 (speed is reported by ``bench_select``, not asserted)."""
    out = bench_select(("params",), repeats=1, top_k=5)
    assert out["candidates"] == [288, 1548, 1548, 2808, 16848, 6]
    assert out["networks"] == pytest.approx(1.96e17, rel=0.01)
    assert out["costs"]["params"] <= out["budgets"]["params"]
    assert out["front"] > 10
    one = bench_select(("params",), repeats=1, top_k=1)
    assert one["score"] == out["score"]
    two = bench_select(("params", "flops"), repeats=1, top_k=1)
    assert all(two["costs"][m] <= two["budgets"][m] for m in ("params", "flops"))
    five = bench_select(("params", "flops"), repeats=1, top_k=5)
    assert five["score"] == two["score"] and five["front"] == two["front"]


def test_synthetic_problem_is_seeded():
    a, ca = synthetic_problem(3)
    b, cb = synthetic_problem(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x["flops"], y["flops"]) for x, y in zip(ca, cb, strict=True))


@st.composite
def coupled_instances(draw):
    """Chains whose blocks' costs depend on the width the previous block passes on: block i
    has one cost row per distinct width of block i-1 (``links[i-1][j]``: candidate j's)."""
    m = draw(st.integers(0, 3))
    blocks = draw(st.integers(1, 4))
    scores, costs, links, rows = [], [], [], 1
    for _ in range(blocks):
        n = draw(st.integers(1, 5))
        scores.append(np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
                               dtype=float))
        flat = draw(st.lists(st.integers(0, 5), min_size=rows * n * m, max_size=rows * n * m))
        cube = np.array(flat, dtype=float).reshape(rows, n, m)
        costs.append(cube if rows > 1 else cube[0])
        widths = draw(st.integers(1, 3))
        links.append(np.array(draw(st.lists(st.integers(0, widths - 1), min_size=n,
                                            max_size=n)), dtype=np.int64))
        rows = widths
    budgets = np.array(draw(st.lists(st.integers(0, 5 * blocks), min_size=m, max_size=m)),
                       dtype=float)
    return scores, costs, links, budgets, draw(st.integers(1, 6))


def _chain_brute_force(scores, costs, links, budgets):
    """Every network of the chain: (choice, score, costs) of the feasible ones."""
    out = []
    for choice in itertools.product(*(range(len(s)) for s in scores)):
        total, row = np.zeros(len(budgets)), 0
        for i, j in enumerate(choice):
            c = costs[i]
            total = total + (c[row, j] if c.ndim == 3 else c[j])
            row = links[i][j]
        if (total <= budgets).all():
            out.append((choice, sum(s[j] for s, j in zip(scores, choice, strict=True)), total))
    return out


@settings(max_examples=200, deadline=None)
@given(coupled_instances())
def test_coupled_widths_against_brute_force(inst):
    scores, costs, links, budgets, k = inst
    feasible = _chain_brute_force(scores, costs, links, budgets)
    if not feasible:
        with pytest.raises(dnax.NoFeasibleNetworkError, match="no network fits"):
            pareto.solve(scores, costs, budgets, top_k=k, links=links)
        return
    sol = pareto.solve(scores, costs, budgets, top_k=k, links=links)
    assert [n.score for n in sol.top] == sorted(s for _, s, _ in feasible)[:k]
    assert len({n.choice for n in sol.top}) == len(sol.top) and sol.optimal
    by_choice = {c: (s, t) for c, s, t in feasible}
    for net in sol.top:
        score, total = by_choice[net.choice]  # feasible, with these very costs
        assert net.score == score and np.array_equal(net.costs, total)


def test_top_k_keeps_networks_whose_reduced_costs_round_above_the_gap():
    """Found by hypothesis: at the last pass (gap = every network's reduced-cost bound) three
    networks' reduced costs, summed in floating point, came out 4e-16 above the gap and were
    dropped, so top-6 returned 5 networks of the 8 that fit."""
    scores = [np.array([18, 18, 17, 8, 18]) / 7, np.array([10 / 7, 10 / 7, 2.0])]
    costs = [np.array([[0., 0, 0], [0, 0, 0], [0, 1, 0], [5, 0, 5], [0, 0, 0]]),
             np.array([[2., 6, 0], [0, 2, 6], [6, 0, 0]])]
    budgets = np.array([6., 4, 8])
    _, sc, _ = brute_force(scores, costs, budgets)
    assert len(sc) == 8
    for k in (6, 7, 8):
        sol = pareto.solve(scores, costs, budgets, top_k=k)
        assert [n.score for n in sol.top] == pytest.approx(np.sort(sc)[:k])
