"""`dnax correlate` and :mod:`dnax.plugins.measure.correlate`: every figure against an oracle.

Oracles: Kendall's τ-b by counting concordant, discordant and tied pairs; Spearman's rho by the
rank-difference formula (no ties) or Pearson's r of brute-force average ranks; Pearson's r by
its sums; figures counted by hand for one small set; the bootstrap intervals reimplemented
resample by resample from the documented seeded draw, and their coverage of a known population
τ (bivariate normal: τ = 2/π·asin rho); regret by hand. A tiny finished run (faultkit's pipeline
up to the select stage, ~10 s) serves the tests of the run's ratings, costs and the CLI.
"""

from __future__ import annotations

import csv
import itertools
import json
import math

import faultkit
import numpy as np
import pytest
from paths import DATA

import dnax
from dnax.plugins.measure.correlate import (
    _json_ready,
    analyse,
    association,
    correlate,
    kendall_rows,
    network_costs,
    pearson_rows,
    read_truth,
    regret,
    resamples,
    spearman_rows,
)

TINY_CSV = DATA / "correlate_tiny.csv"


# --- brute-force oracles ----------------------------------------------------------------------

def tau_b(x, y):
    """(nc - nd) / sqrt((n0 - n1)(n0 - n2)) by counting every pair."""
    nc = nd = tx = ty = 0
    n0 = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        n0 += 1
        if x[i] == x[j]:
            tx += 1
        if y[i] == y[j]:
            ty += 1
        if x[i] != x[j] and y[i] != y[j]:
            if (x[i] > x[j]) == (y[i] > y[j]):
                nc += 1
            else:
                nd += 1
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return (nc - nd) / den if den else math.nan


def avg_ranks(v):
    return [1 + sum(w < a for w in v) + (sum(w == a for w in v) - 1) / 2 for a in v]


def pearson(x, y):
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def spearman(x, y):
    return pearson(avg_ranks(x), avg_ranks(y))


def spearman_no_ties(x, y):
    n = len(x)
    d2 = sum((a - b) ** 2 for a, b in zip(avg_ranks(x), avg_ranks(y), strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


def percentile_ci(stat, x, y, n_boot, seed, confidence=0.95):
    """The documented bootstrap, one resample at a time: default_rng(seed).integers(0, n,
    (n_boot, n)), the statistic per resample, undefined ones dropped, percentile interval."""
    x, y = np.asarray(x), np.asarray(y)
    draws = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    vals = [stat(list(x[d]), list(y[d])) for d in draws]
    vals = [v for v in vals if not math.isnan(v)]
    a = (1 - confidence) / 2
    return list(np.quantile(vals, [a, 1 - a]))


# --- statistics on a hand-made set ------------------------------------------------------------

#: ratings (lower is better) and accuracies of 8 architectures, counted by hand: 22 concordant
#: and 6 discordant pairs, so τ = 16/28 = 4/7; Σd² = 16, so rho = 1 - 6·16/(8·63) = 17/21; the
#: top pick (rating 0.1) has 88.5, the best 89: regret 0.5, true rank 2
HAND_RATING = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
HAND_ACC = [88.5, 88.0, 89.0, 85.0, 86.0, 87.0, 80.0, 81.0]


def test_hand_counted_set():
    rep = analyse(HAND_RATING, HAND_ACC, n_boot=200)
    d = rep["predictors"]["dnax"]
    assert d["kendall"]["value"] == pytest.approx(4 / 7)
    assert d["spearman"]["value"] == pytest.approx(17 / 21)
    g = [-r for r in HAND_RATING]
    assert tau_b(g, HAND_ACC) == pytest.approx(4 / 7)
    assert spearman_no_ties(g, HAND_ACC) == pytest.approx(17 / 21)
    assert d["pearson"]["value"] == pytest.approx(pearson(g, HAND_ACC))
    assert (d["regret"], d["true_rank"], d["top"], d["best"]) == (pytest.approx(0.5), 2, 0, 2)
    assert rep["noise_ceiling"] is None and "terciles" not in rep
    lo, hi = d["kendall"]["ci"]
    assert lo <= 4 / 7 <= hi


def test_block_losses_are_lower_is_better():
    """τ of score against loss (both lower is better) is positive when they agree; regret is
    the top pick's loss minus the best loss."""
    score = [0.3, 0.1, 0.2, 0.5, 0.4]
    loss = [2.0, 1.5, 1.0, 3.0, 2.5]
    rep = analyse(score, loss, lower_is_better=True, n_boot=50)["predictors"]["dnax"]
    assert rep["kendall"]["value"] == pytest.approx(tau_b(score, loss))
    assert rep["kendall"]["value"] > 0
    assert rep["regret"] == pytest.approx(1.5 - 1.0) and rep["true_rank"] == 2


@pytest.mark.parametrize("ties", [False, True])
def test_statistics_match_brute_force(ties):
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(3, 25))
        x = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n)
        y = (x + rng.integers(0, 4, n)) if ties else x + rng.normal(size=n)
        a = association(x, y, n_boot=1)
        for name, oracle in (("kendall", tau_b), ("spearman", spearman), ("pearson", pearson)):
            want = oracle(list(x), list(y))
            if math.isnan(want):
                assert a[name]["value"] is None or math.isnan(a[name]["value"])
            else:
                assert a[name]["value"] == pytest.approx(want, abs=1e-12)
        # the vectorised rows used by the bootstrap
        assert kendall_rows(x, y)[0] == pytest.approx(tau_b(list(x), list(y)), nan_ok=True)
        assert spearman_rows(x, y)[0] == pytest.approx(spearman(list(x), list(y)), nan_ok=True)
        assert pearson_rows(x, y)[0] == pytest.approx(pearson(list(x), list(y)), nan_ok=True)


def test_constant_values_are_undefined_not_numbers():
    assert math.isnan(kendall_rows([1, 1, 1], [1, 2, 3])[0])
    assert math.isnan(pearson_rows([0.1] * 5, [1, 2, 3, 4, 5])[0])
    rep = _json_ready(analyse([1, 1, 1], [1, 2, 3], n_boot=5))
    assert rep["predictors"]["dnax"]["kendall"]["value"] is None


# --- the bootstrap ----------------------------------------------------------------------------

def test_bootstrap_intervals_match_a_resample_by_resample_reimplementation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=15)
    y = np.round(x + rng.normal(size=15), 1)
    a = association(x, y, n_boot=300, seed=11)
    for name, oracle in (("kendall", tau_b), ("spearman", spearman), ("pearson", pearson)):
        assert a[name]["ci"] == pytest.approx(percentile_ci(oracle, x, y, 300, 11), abs=1e-12)
    assert association(x, y, n_boot=300, seed=12)["kendall"]["ci"] != a["kendall"]["ci"]
    assert np.array_equal(resamples(15, 300, 11),
                          np.random.default_rng(11).integers(0, 15, size=(300, 15)))


def test_bootstrap_interval_covers_the_population_tau():
    """Bivariate normal with rho = 0.6: population τ = 2/π·asin(0.6) ≈ 0.41. The 95 % interval
    covers it in about 95 % of 200 samples of 30 (binomial sd 1.5 points); it narrows about as
    1/√n."""
    tau = 2 / math.pi * math.asin(0.6)
    rng = np.random.default_rng(123)
    cov = [[1, 0.6], [0.6, 1]]
    hits, widths = 0, {30: [], 120: []}
    for r in range(200):
        z = rng.multivariate_normal([0, 0], cov, size=30)
        lo, hi = association(z[:, 0], z[:, 1], n_boot=300, seed=r)["kendall"]["ci"]
        hits += lo <= tau <= hi
        widths[30].append(hi - lo)
    for r in range(20):
        z = rng.multivariate_normal([0, 0], cov, size=120)
        lo, hi = association(z[:, 0], z[:, 1], n_boot=300, seed=r)["kendall"]["ci"]
        widths[120].append(hi - lo)
    assert 0.89 <= hits / 200 <= 0.99
    assert 1.6 < np.mean(widths[30]) / np.mean(widths[120]) < 2.5


def test_paired_difference_of_two_predictors():
    rng = np.random.default_rng(5)
    acc = rng.normal(size=20)
    rating = -(acc + rng.normal(size=20) * 0.5)
    other = acc + rng.normal(size=20) * 2.0
    rep = analyse(rating, acc, versus=other, versus_name="spos", n_boot=300, seed=4)
    d = rep["difference"]
    g = list(-rating)
    assert d["kendall"] == pytest.approx(tau_b(g, list(acc)) - tau_b(list(other), list(acc)))
    draws = np.random.default_rng(4).integers(0, 20, size=(300, 20))
    diffs = np.array([tau_b(list(-rating[i]), list(acc[i])) - tau_b(list(other[i]),
                                                                     list(acc[i]))
                      for i in draws])
    assert d["ci"] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    assert d["p"] == pytest.approx(float((diffs <= 0).mean()))
    # against itself: no difference in any resample
    same = analyse(rating, acc, versus=-rating, n_boot=100)["difference"]
    assert same["kendall"] == 0 and same["ci"] == [0, 0] and same["p"] == 1


def test_terciles_and_partial_tau_given_params():
    rng = np.random.default_rng(8)
    params = rng.permutation(np.arange(12) * 1000.0 + 500)
    acc = params / 1000 + rng.normal(size=12)
    rating = -(params / 1000 + rng.normal(size=12))
    rep = analyse(rating, acc, params=params, n_boot=200, seed=1)
    g = list(-rating)
    order = sorted(range(12), key=lambda i: params[i])
    for k, row in enumerate(rep["terciles"]):
        part = order[4 * k:4 * k + 4]
        assert row["n"] == 4
        assert row["params"] == [params[part].min(), params[part].max()]
        assert row["kendall"]["value"] == pytest.approx(tau_b([g[i] for i in part],
                                                              [acc[i] for i in part]))
    txy, txz, tyz = tau_b(g, list(acc)), tau_b(g, list(params)), tau_b(list(acc), list(params))
    want = (txy - txz * tyz) / math.sqrt((1 - txz ** 2) * (1 - tyz ** 2))
    assert rep["partial_kendall"]["value"] == pytest.approx(want)
    assert rep["predictors"]["params"]["kendall"]["value"] == pytest.approx(tyz)


def test_noise_ceiling_between_seeds():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(10, 3))
    truth[4, 2] = np.nan  # not measured with the third seed: left out of the ceiling
    rating = rng.normal(size=10)
    rep = analyse(rating, truth, seeds=("a", "b", "c"), n_boot=100)
    nc = rep["noise_ceiling"]
    keep = [i for i in range(10) if i != 4]
    pairs = [tau_b(list(truth[keep, a]), list(truth[keep, b]))
             for a, b in ((0, 1), (0, 2), (1, 2))]
    assert nc["n"] == 9 and [p["seeds"] for p in nc["pairs"]] == [["a", "b"], ["a", "c"],
                                                                   ["b", "c"]]
    assert [p["kendall"] for p in nc["pairs"]] == pytest.approx(pairs)
    assert nc["kendall"] == pytest.approx(np.mean(pairs))
    # the truth is the mean over the seeds measured (unit 4: over two)
    mean = [np.mean([v for v in row if not math.isnan(v)]) for row in truth]
    top = int(np.argmin(rating))
    assert rep["predictors"]["dnax"]["regret"] == pytest.approx(max(mean) - mean[top])
    assert rep["predictors"]["dnax"]["kendall"]["value"] == pytest.approx(
        tau_b(list(-rating), mean))
    assert rep["measurements"] == 29


def test_regret_by_hand():
    assert regret([3, 1, 2], [70, 80, 75]) == {"top": 0, "ties": 1, "regret": 10.0,
                                              "true_rank": 3, "best": 1}
    assert regret([1, 5, 5], [70, 80, 75])["ties"] == 2


def test_network_costs_follow_the_width_chain_like_the_selector():
    """2-D costs (one row per width entering the block) against the selector's own sum."""
    from dnax.plugins.selectors.coupling import network_costs as selector_costs

    def cand(block, i, cell):
        return dnax.Candidate(block, i, cell, (0,), ("ir_r1_k3_s1_e3_c8",))

    b0 = dnax.BlockRanking(0, tuple(cand(0, i, i % 2) for i in range(4)), {"nmae": np.zeros(4)},
                           {"params": np.array([10.0, 20, 30, 40])}, cell_widths=(8, 16))
    b1 = dnax.BlockRanking(1, tuple(cand(1, i, i % 3) for i in range(3)), {"nmae": np.zeros(3)},
                           {"params": np.array([[1.0, 2, 3], [100, 200, 300]])},
                           cell_widths=(24, 32, 24))
    b2 = dnax.BlockRanking(2, tuple(cand(2, i, 0) for i in range(2)), {"nmae": np.zeros(2)},
                           {"params": np.array([[5.0, 6], [7, 8]])}, cell_widths=(40,))
    rankings = [b0, b1, b2]
    choices = np.array(list(itertools.product(range(4), range(3), range(2))))
    got = network_costs(rankings, choices, "params", fixed=1000.0)
    want = [selector_costs(rankings, {"params": 1000.0}, tuple(c))["params"] for c in choices]
    assert list(got) == want


# --- reading the CSV --------------------------------------------------------------------------

def test_read_truth_kinds(tmp_path):
    t = read_truth(TINY_CSV, versus="spos_score")
    assert t.kind == "architecture" and t.column == "accuracy" and t.seeds == ("0", "1")
    assert t.units[:2] == ((0, 0), (3, 17)) and t.lines[:2] == (2, 4)
    assert t.values[0].tolist() == [91.2, 90.6] and t.versus[0] == pytest.approx(0.41)
    cols = tmp_path / "cols.csv"
    cols.write_text("block0,block1,top1\n1,2,80\n3,4,81\n")
    t = read_truth(cols, column="top1")
    assert t.units == ((1, 2), (3, 4)) and t.key_columns == ("block0", "block1")
    blocks = tmp_path / "blocks.csv"
    blocks.write_text("block,candidate,loss\n0,3,1.5\n1,2,0.5\n")
    t = read_truth(blocks)
    assert t.kind == "block" and t.units == ((0, 3), (1, 2)) and t.column == "loss"


BAD = [
    ("candidates,accuracy\n1 2,80\n3 x,81\n", "line 3, column 'candidates': expected candidate "
     "indices"),
    ("candidates,accuracy\n1 2,abc\n", "line 2, column 'accuracy': expected a finite number, "
     "got 'abc'"),
    ("candidates,accuracy\n1 2,nan\n", "line 2, column 'accuracy': expected a finite number"),
    ("candidates,accuracy\n1 2,80\n1 2,81\n", "line 3: the same architecture as line 2"),
    ("candidates,accuracy,seed\n1 2,80,0\n1 2,81,0\n", "line 3: the same architecture and "
     "seed '0' as line 2"),
    ("candidates,accuracy\n1 2,80,3\n", "line 2: 3 fields, the header has 2"),
    ("cands,accuracy\n1 2,80\n", "line 1: no column naming the architecture"),
    ("candidates,acc\n1 2,80\n", "line 1: no column 'accuracy' (columns: 'candidates', 'acc'); "
     "name the measured column with --column"),
    ("block0,block2,accuracy\n1,2,80\n", "line 1: block columns block0, block2; expected "
     "block0 to block1"),
    ("block,candidate,loss\n0,-1,2\n", "line 2, column 'candidate': expected a candidate index"),
    ("", "empty"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_csv_is_one_line_naming_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "truth.csv"
    path.write_text(text)
    with pytest.raises(dnax.ArtifactError) as e:
        read_truth(path)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(f"{path}: ") and message in e.value.problems[0]


# --- a finished run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """faultkit's tiny pipeline, every stage up to select (rankings and costs), in-process."""
    from dnax.registry import Registry

    run_dir = tmp_path_factory.mktemp("correlate") / "run"
    with faultkit.torch_settings():
        dnax.run_pipeline(faultkit.TINY, run_dir, until="select",
                          registry=Registry.create(entry_points=False))
    return run_dir


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_run_ratings_params_and_figures(tiny_run):
    run = dnax.load_run(tiny_run)
    rk = run.rankings()
    rep = correlate(tiny_run, TINY_CSV, versus="spos_score", n_boot=200, seed=3)
    rows = _rows(TINY_CSV)
    archs = list(dict.fromkeys(r["candidates"] for r in rows))
    choice = [tuple(map(int, a.split())) for a in archs]
    rating = [sum(float(rk[k].scores["nmae"][c[k]]) for k in range(2)) for c in choice]
    acc = [np.mean([float(r["accuracy"]) for r in rows if r["candidates"] == a]) for a in archs]
    spos = [float(next(r["spos_score"] for r in rows if r["candidates"] == a)) for a in archs]
    g = [-r for r in rating]
    assert rep["kind"] == "architecture" and rep["key"] == "nmae" and rep["n"] == 10
    assert [p["rating"] for p in rep["points"]] == pytest.approx(rating)
    d = rep["predictors"]["dnax"]
    assert d["kendall"]["value"] == pytest.approx(tau_b(g, acc))
    assert d["spearman"]["value"] == pytest.approx(spearman(g, acc))
    assert d["pearson"]["value"] == pytest.approx(pearson(g, acc))
    assert d["kendall"]["ci"] == pytest.approx(percentile_ci(tau_b, g, acc, 200, 3))
    top = int(np.argmin(rating))
    assert d["regret"] == pytest.approx(max(acc) - acc[top])
    assert d["top_unit"] == list(choice[top])
    assert rep["predictors"]["spos_score"]["kendall"]["value"] == pytest.approx(tau_b(spos, acc))
    # params: the run's costs along the chain; the selected network's as the selector added up
    assert rep["params_source"] == "the run's params costs"
    sel = run.selection
    assert network_costs(rk, np.array([sel.candidates]), "params",
                         run.fixed_costs["params"])[0] == pytest.approx(sel.costs["params"])
    params = network_costs(rk, np.array(choice), "params", run.fixed_costs["params"])
    assert [p["params"] for p in rep["points"]] == pytest.approx(list(params))
    seeds = [[float(r["accuracy"]) for r in rows if r["seed"] == s] for s in ("0", "1")]
    assert rep["noise_ceiling"]["kendall"] == pytest.approx(tau_b(*seeds))
    # a second run as the second predictor: the same run, no difference
    same = correlate(tiny_run, TINY_CSV, versus_run=tiny_run, n_boot=50)
    assert same["difference"]["ci"] == [0, 0]


@pytest.mark.slow
def test_cli_json_table_and_plot(tiny_run, tmp_path):
    png = tmp_path / "scatter.png"
    res = faultkit.cli(["correlate", tiny_run, TINY_CSV, "--versus", "spos_score", "--json",
                        "--bootstrap", "100", "--plot", png])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    lib = correlate(tiny_run, TINY_CSV, versus="spos_score", n_boot=100)
    assert data["predictors"] == lib["predictors"] and data["difference"] == lib["difference"]
    assert data["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
    res = faultkit.cli(["correlate", tiny_run, TINY_CSV, "--versus", "spos_score",
                        "--bootstrap", "100"])
    assert res.exit_code == 0, res.stderr
    for text in ("Kendall τ-b", "Spearman", "Pearson", "dnax -nmae", "spos_score", "regret",
                 "terciles", "partial τ given params", "paired bootstrap", "noise ceiling"):
        assert text in res.stdout


@pytest.mark.slow
def test_cli_block_losses(tiny_run, tmp_path):
    rk = dnax.load_run(tiny_run).rankings()
    path = tmp_path / "blocks.csv"
    lines = ["block,candidate,loss"]
    wiggle = [0.3, -0.2, 0.1, 0.0, -0.1]
    truth = {}
    for r in rk:
        for c in range(0, len(r.candidates), 2):
            truth[r.block, c] = float(r.scores["nmae"][c]) + wiggle[c % 5]
            lines.append(f"{r.block},{c},{truth[r.block, c]}")
    path.write_text("\n".join(lines) + "\n")
    res = faultkit.cli(["correlate", tiny_run, path, "--json", "--bootstrap", "50"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["kind"] == "block" and [b["block"] for b in data["blocks"]] == [0, 1]
    for b, r in zip(data["blocks"], rk, strict=True):
        cands = range(0, len(r.candidates), 2)
        score = [float(r.scores["nmae"][c]) for c in cands]
        loss = [truth[r.block, c] for c in cands]
        assert b["n"] == 10
        assert b["predictors"]["dnax"]["kendall"]["value"] == pytest.approx(tau_b(score, loss))
        best = min(loss)
        assert b["predictors"]["dnax"]["regret"] == pytest.approx(
            loss[int(np.argmin(score))] - best)


@pytest.mark.slow
def test_cli_errors_are_one_line_each(tiny_run, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("candidates,accuracy\n1 2,80\n40 1,70\n1 1 1,3\n")
    res = faultkit.cli(["correlate", tiny_run, path])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"error: {path}: line 3, column 'candidates': candidate 40 of block 0, which has 20 "
        "(0 to 19)",
        f"error: {path}: line 4, column 'candidates': 3 blocks, the run {tiny_run} searched 2"]
    path.write_text("candidates,accuracy\n1 2,80\n1 3,x\n")
    res = faultkit.cli(["correlate", tiny_run, path])
    assert res.exit_code == 2 and res.stderr == (f"error: {path}: line 3, column 'accuracy': "
                                                 "expected a finite number, got 'x'\n")
    res = faultkit.cli(["correlate", tiny_run, TINY_CSV, "--key", "nope"])
    assert res.exit_code == 2 and "key 'nope': not a score of" in res.stderr
    res = faultkit.cli(["correlate", tmp_path, TINY_CSV])
    assert res.exit_code == 2 and "not a dnax run directory" in res.stderr
    res = faultkit.cli(["correlate", tiny_run, tmp_path / "missing.csv"])
    assert res.exit_code == 2 and res.stderr.strip().endswith("missing.csv: no such file")


@pytest.mark.slow
def test_before_select_the_params_column_or_nothing(tiny_run, tmp_path):
    ranked = tmp_path / "ranked"
    faultkit.keep_until(tiny_run, ranked, "select")
    rep = correlate(ranked, TINY_CSV, n_boot=20)
    assert rep["params_source"] is None and "terciles" not in rep
    assert "params" not in rep["predictors"]
    with_params = tmp_path / "p.csv"
    rows = _rows(TINY_CSV)
    with open(with_params, "w", newline="") as f:
        w = csv.DictWriter(f, [*rows[0], "params"])
        w.writeheader()
        for k, r in enumerate(rows):
            w.writerow({**r, "params": 1000 + 10 * (k // 2)})
    rep = correlate(ranked, with_params, n_boot=20)
    assert rep["params_source"].startswith("the 'params' column")
    assert len(rep["terciles"]) == 3
    res = faultkit.cli(["correlate", ranked, TINY_CSV, "--bootstrap", "20"])
    assert res.exit_code == 0 and "no params costs in the run" in res.stdout
