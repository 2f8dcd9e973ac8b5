"""How well a run's ratings rank architectures: its scores against a CSV of ground truth.

Two kinds of ground truth, told apart by the CSV's columns:

- **architecture → accuracy**: a ``candidates`` column (one candidate index per searched block,
  ``"3 17 0 5"``) or columns ``block0`` .. ``blockN``, and the measured value (``accuracy``, or
  the column named by ``column``). The run rates an architecture by the sum of its blocks'
  scores (``key``, the rank stage's key by default: lower is better).
- **block candidate → stand-alone block loss**: columns ``block``, ``candidate`` and ``loss``
  (or ``column``): each block on its own, the supernet's score of a candidate against the loss
  the candidate reaches when trained alone.

An optional ``seed`` column holds repeated measurements of one architecture (or candidate): the
truth is their mean, and Kendall's τ between seeds is reported as the noise ceiling. An
optional ``params`` column is used for the parameter terciles when the run stored no costs.

Every statistic is taken between *goodness* values, so that a positive τ means agreement: the
prediction is ``-rating`` (lower scores are better), the truth is the accuracy, or ``-loss`` for
block losses. Kendall's τ-b, Spearman's rho and Pearson's r come from :mod:`scipy.stats`. Their
95 % intervals are percentile bootstraps: ``numpy.random.default_rng(seed).integers(0, n,
size=(n_boot, n))`` draws the resamples of the ``n`` architectures, every statistic and
predictor of one group uses the same resamples (so differences are paired), and resamples in
which a statistic is undefined (constant values) are left out of its interval.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from attrs import frozen

from dnax.api import Run, load_run
from dnax.errors import ArtifactError, ConfigError
from dnax.rundir import save_figure
from dnax.types import BlockRanking

#: at most this many problems of a CSV are listed, then a count of the rest
MAX_PROBLEMS = 20
ARCH, BLOCK = "architecture", "block"
_BLOCK_COL = re.compile(r"block(\d+)")


# --- statistics on rows (one bootstrap resample per row) ---------------------------------------

def _constant(a: np.ndarray) -> np.ndarray:
    return np.ptp(a, axis=-1) == 0


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of ``x`` with the same row of ``y`` (NaN where either is
    constant)."""
    x, y = np.atleast_2d(x).astype(np.float64), np.atleast_2d(y).astype(np.float64)
    xm = x - x.mean(axis=1, keepdims=True)
    ym = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xm * ym).sum(axis=1) / np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))
    r[_constant(x) | _constant(y)] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho per row: Pearson's r of the average ranks."""
    from scipy.stats import rankdata

    return pearson_rows(rankdata(np.atleast_2d(x), axis=1), rankdata(np.atleast_2d(y), axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b per row, from the signs of every pair: Σ sx·sy / √(Σ sx² · Σ sy²)."""
    x, y = np.atleast_2d(x).astype(np.float64), np.atleast_2d(y).astype(np.float64)
    n = x.shape[1]
    i, j = np.triu_indices(n, 1)
    out = np.full(x.shape[0], np.nan)
    step = max(1, 4_000_000 // max(1, len(i)))
    for s in range(0, x.shape[0], step):
        sx = np.sign(x[s:s + step, i] - x[s:s + step, j])
        sy = np.sign(y[s:s + step, i] - y[s:s + step, j])
        den = np.sqrt((sx * sx).sum(axis=1) * (sy * sy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = np.where(den > 0, (sx * sy).sum(axis=1) / den, np.nan)
    return out


ROW_STATS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "kendall": kendall_rows, "spearman": spearman_rows, "pearson": pearson_rows}


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap resamples of ``n`` items: ``(n_boot, n)`` indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(values: np.ndarray, confidence: float) -> list[float]:
    """The percentile interval of the finite ``values`` (NaN, NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [math.nan, math.nan]
    a = (1 - confidence) / 2
    return [float(q) for q in np.quantile(v, [a, 1 - a])]


def partial_tau(txy: Any, txz: Any, tyz: Any) -> Any:
    """Kendall's partial τ of x and y given z: (τxy - τxz·τyz) / √((1 - τxz²)(1 - τyz²))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (txy - txz * tyz) / np.sqrt((1 - txz ** 2) * (1 - tyz ** 2))


def _scipy(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[float, float]]:
    from scipy import stats

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, f in (("kendall", stats.kendalltau), ("spearman", stats.spearmanr),
                        ("pearson", stats.pearsonr)):
            if len(x) < 2 or _constant(x) or _constant(y):
                out[name] = (math.nan, math.nan)
            else:
                r = f(x, y)
                out[name] = (float(r.statistic), float(r.pvalue))
    return out


def association(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                confidence: float = 0.95, idx: np.ndarray | None = None) -> dict[str, Any]:
    """Kendall's τ-b, Spearman's rho and Pearson's r of ``x`` with ``y`` (scipy.stats), each with
    its p-value and bootstrap interval (``idx``: the resamples, :func:`resamples` by default)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if idx is None:
        idx = resamples(len(x), n_boot, seed)
    out: dict[str, Any] = {"n": len(x)}
    for name, (value, p) in _scipy(x, y).items():
        boot = ROW_STATS[name](x[idx], y[idx]) if len(x) >= 2 and len(idx) else np.array([])
        out[name] = {"value": value, "p": p, "ci": interval(boot, confidence)}
    return out


def regret(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, Any]:
    """The top pick (highest ``predicted`` goodness; the first of ties) against the best truth:
    ``regret`` = best true goodness - the top pick's, and the top pick's rank by truth (1 = best,
    ties counted in its favour)."""
    g, t = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    top = int(np.argmax(g))
    return {"top": top, "ties": int((g == g[top]).sum()), "regret": float(t.max() - t[top]),
            "true_rank": int((t > t[top]).sum()) + 1, "best": int(np.argmax(t))}


# --- the ground truth -------------------------------------------------------------------------

@frozen
class Truth:
    """A ground-truth CSV read back: one unit (an architecture, or a block's candidate) per
    distinct key, with its measurement per seed."""

    path: Path
    kind: str
    column: str
    #: per unit: the candidate index per block (architectures) or (block, candidate)
    units: tuple[tuple[int, ...], ...]
    #: per unit: the first line of the CSV that names it
    lines: tuple[int, ...]
    #: the column(s) that name a unit, for error messages
    key_columns: tuple[str, ...]
    #: (units, seeds), NaN where a unit was not measured with a seed
    values: np.ndarray
    seeds: tuple[str, ...]
    versus: np.ndarray | None = None
    versus_column: str | None = None
    params: np.ndarray | None = None


def _problems(path: Path, problems: list[str]) -> ArtifactError:
    lines = [f"{path}: {p}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{path}: ... and {len(problems) - MAX_PROBLEMS} more problems")
    return ArtifactError(lines)


def _number(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError
    return v


def _index(text: str) -> int:
    v = int(text)
    if v < 0:
        raise ValueError
    return v


def _candidates(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[\s,;]+", text.strip("[]() ")) if p]
    if not parts:
        raise ValueError
    return tuple(_index(p) for p in parts)


class _Parser:
    """Parses the cells of one CSV row; each bad cell adds one problem naming line and
    column."""

    def __init__(self, cell: Mapping[str, str], line: int, problems: list[str]):
        self.cell, self.line, self.problems = cell, line, problems

    def __call__(self, name: str, conv: Callable[[str], Any], what: str) -> Any:
        try:
            return conv(self.cell[name])
        except ValueError:
            self.problems.append(f"line {self.line}, column {name!r}: expected {what}, got "
                                 f"{self.cell[name]!r}")
            return None


def read_truth(path: str | os.PathLike, *, column: str | None = None,
               versus: str | None = None) -> Truth:
    """Read a ground-truth CSV (see the module's doc); every problem is one line naming the
    file, the line and the column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise ArtifactError(f"{path}: line {reader.line_num}: {e}") from None
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ArtifactError(f"{path}: empty (expected a header line, then one row per "
                            "measurement)")
    head_line, header = rows[0]
    header = [h.strip() for h in header]
    where = f"line {head_line}"
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ArtifactError(f"{path}: {where}: column {dup[0]!r} appears twice")
    names = ", ".join(repr(h) for h in header)
    blocks = sorted((int(m.group(1)), h) for h in header if (m := _BLOCK_COL.fullmatch(h)))
    if "block" in header and "candidate" in header:
        kind, key_columns = BLOCK, ("block", "candidate")
    elif "candidates" in header:
        kind, key_columns = ARCH, ("candidates",)
    elif blocks:
        if [b for b, _ in blocks] != list(range(len(blocks))):
            raise ArtifactError(f"{path}: {where}: block columns "
                                f"{', '.join(h for _, h in blocks)}; expected block0 to "
                                f"block{len(blocks) - 1}")
        kind, key_columns = ARCH, tuple(h for _, h in blocks)
    else:
        raise ArtifactError(f"{path}: {where}: no column naming the architecture: expected "
                            "'candidates' (the candidate index per block, like '3 17 0 5'), "
                            f"block0..blockN, or 'block' and 'candidate' (columns: {names})")
    value_col = column or ("accuracy" if kind == ARCH else "loss")
    missing = [c for c in (value_col, versus) if c is not None and c not in header]
    if missing:
        hint = "" if column else "; name the measured column with --column"
        raise ArtifactError(f"{path}: {where}: no column {missing[0]!r} (columns: {names})"
                            + (hint if missing[0] == value_col else ""))
    col = {h: k for k, h in enumerate(header)}
    has_seed, has_params = "seed" in col, "params" in col
    problems: list[str] = []
    measured: dict[tuple[int, ...], dict[str, float]] = {}
    first: dict[tuple[int, ...], int] = {}
    seen: dict[tuple[tuple[int, ...], str], int] = {}
    other: dict[tuple[int, ...], list[float]] = {}
    params: dict[tuple[int, ...], float] = {}
    for line, row in rows[1:]:
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} field{'s' if len(row) != 1 else ''}, "
                            f"the header has {len(header)}")
            continue
        cell = {h: row[k].strip() for h, k in col.items()}
        bad = len(problems)
        parse = _Parser(cell, line, problems)
        if kind == BLOCK:
            key = (parse("block", _index, "a block index"),
                   parse("candidate", _index, "a candidate index"))
        elif key_columns == ("candidates",):
            key = parse("candidates", _candidates,
                        "candidate indices separated by spaces, like '3 17 0 5'")
        else:
            key = tuple(parse(h, _index, "a candidate index") for h in key_columns)
        value = parse(value_col, _number, "a finite number")
        seed = cell["seed"] if has_seed else ""
        if has_seed and not seed:
            problems.append(f"line {line}, column 'seed': empty")
        vs = parse(versus, _number, "a finite number") if versus else None
        size = parse("params", _number, "a parameter count") if has_params else None
        if len(problems) > bad:
            continue
        if (key, seed) in seen:
            what = "architecture" if kind == ARCH else "block candidate"
            problems.append(f"line {line}: the same {what}"
                            + (f" and seed {seed!r}" if has_seed else "")
                            + f" as line {seen[key, seed]}"
                            + ("" if has_seed else " (a 'seed' column tells repeated runs "
                               "apart)"))
            continue
        seen[key, seed] = line
        first.setdefault(key, line)
        measured.setdefault(key, {})[seed] = value
        if vs is not None:
            other.setdefault(key, []).append(vs)
        if size is not None:
            params.setdefault(key, size)
    if problems:
        raise _problems(path, problems)
    if not measured:
        raise ArtifactError(f"{path}: no rows after the header")
    units = tuple(measured)
    seeds = tuple(dict.fromkeys(s for u in units for s in measured[u]))
    values = np.array([[measured[u].get(s, np.nan) for s in seeds] for u in units])
    return Truth(path, kind, value_col, units, tuple(first[u] for u in units), key_columns,
                 values, seeds,
                 np.array([np.mean(other[u]) for u in units]) if versus else None, versus,
                 np.array([params[u] for u in units]) if has_params else None)


# --- ratings and costs from a run -------------------------------------------------------------

def network_costs(rankings: Sequence[BlockRanking], choices: np.ndarray, metric: str,
                  fixed: float = 0.0) -> np.ndarray:
    """The whole-network ``metric`` of each row of ``choices`` (one candidate per block): the
    fixed part plus, per block, the chosen candidate's cost in the row the previous block's
    chosen width selects (see :class:`dnax.BlockRanking`)."""
    choices = np.asarray(choices, dtype=np.int64)
    total = np.full(len(choices), float(fixed))
    for k, r in enumerate(rankings):
        a = np.asarray(r.costs[metric], dtype=np.float64)
        c = choices[:, k]
        if a.ndim == 1:
            total += a[c]
            continue
        if k == 0:
            raise ArtifactError(f"block {r.block}: {metric} costs of {a.shape[0]} rows, but no "
                                "block before it passes on a width")
        prev = rankings[k - 1]
        row = {w: i for i, w in enumerate(prev.out_widths)}
        total += a[[row[prev.out_width(int(j))] for j in choices[:, k - 1]], c]
    return total


def _rankings(run: Any) -> tuple[Run, list[BlockRanking], str]:
    run = run if isinstance(run, Run) else load_run(run)
    rankings = run.rankings()
    if not rankings:
        raise ArtifactError(f"{run.run_dir.root}: the rank stage has not finished")
    return run, rankings, run.results["rank"].key


def _check_key(run: Any, rankings: Sequence[BlockRanking], key: str) -> None:
    missing = [r.block for r in rankings if key not in r.scores]
    if missing:
        raise ConfigError(f"key {key!r}: not a score of {run.run_dir.root} (its scores: "
                          f"{', '.join(rankings[0].scores)})")


def _check_units(truth: Truth, rankings: Sequence[BlockRanking], root: Path) -> None:
    problems = []
    sizes = {r.block: len(r.candidates) for r in rankings}
    for unit, line in zip(truth.units, truth.lines, strict=True):
        if truth.kind == BLOCK:
            b, c = unit
            if b not in sizes:
                problems.append(f"line {line}, column 'block': no block {b} in {root} "
                                f"(blocks: {', '.join(map(str, sizes))})")
            elif c >= sizes[b]:
                problems.append(f"line {line}, column 'candidate': candidate {c}, block {b} "
                                f"has {sizes[b]} (0 to {sizes[b] - 1})")
            continue
        if len(unit) != len(rankings):
            problems.append(f"line {line}, column {truth.key_columns[0]!r}: {len(unit)} blocks, "
                            f"the run {root} searched {len(rankings)}")
            continue
        for k, (c, r) in enumerate(zip(unit, rankings, strict=True)):
            if c >= len(r.candidates):
                name = truth.key_columns[k] if len(truth.key_columns) > 1 else "candidates"
                problems.append(f"line {line}, column {name!r}: candidate {c} of block "
                                f"{r.block}, which has {len(r.candidates)} (0 to "
                                f"{len(r.candidates) - 1})")
    if problems:
        raise _problems(truth.path, problems)


def _block_costs(r: BlockRanking, metric: str) -> np.ndarray | None:
    if metric not in r.costs:
        return None
    a = np.asarray(r.costs[metric], dtype=np.float64)
    return a if a.ndim == 1 else a.mean(axis=0)  # width-dependent: the mean over entering widths


def _ratings(truth: Truth, rankings: Sequence[BlockRanking], key: str) -> np.ndarray:
    if truth.kind == BLOCK:
        by = {r.block: np.asarray(r.scores[key], dtype=np.float64) for r in rankings}
        return np.array([by[b][c] for b, c in truth.units])
    choices = np.array(truth.units, dtype=np.int64)
    return sum(np.asarray(r.scores[key], dtype=np.float64)[choices[:, k]]
               for k, r in enumerate(rankings))


# --- the report -------------------------------------------------------------------------------

def _noise_ceiling(values: np.ndarray, seeds: Sequence[str], sign: float, n_boot: int,
                   seed: int, confidence: float) -> dict[str, Any] | None:
    """Kendall's τ between seeds over the units measured with every seed: per pair of seeds,
    and their mean with its bootstrap interval."""
    if values.shape[1] < 2:
        return None
    complete = np.isfinite(values).all(axis=1)
    v = sign * values[complete]
    if len(v) < 3:
        return {"n": len(v), "kendall": math.nan, "ci": [math.nan, math.nan], "pairs": [],
                "note": "fewer than 3 units measured with every seed"}
    pairs = list(itertools.combinations(range(v.shape[1]), 2))
    idx = resamples(len(v), n_boot, seed)
    taus = [_scipy(v[:, a], v[:, b])["kendall"][0] for a, b in pairs]
    boot = np.mean([kendall_rows(v[idx, a], v[idx, b]) for a, b in pairs], axis=0)
    return {"n": len(v), "kendall": float(np.mean(taus)), "ci": interval(boot, confidence),
            "pairs": [{"seeds": [seeds[a], seeds[b]], "kendall": t}
                      for (a, b), t in zip(pairs, taus, strict=True)]}


def _terciles(g: np.ndarray, t: np.ndarray, params: np.ndarray, n_boot: int, seed: int,
              confidence: float) -> list[dict[str, Any]]:
    order = np.argsort(params, kind="stable")
    out = []
    for k, part in enumerate(np.array_split(order, 3)):
        if not len(part):
            continue
        a = association(g[part], t[part], n_boot=n_boot, seed=seed, confidence=confidence)
        out.append({"tercile": k + 1, "n": len(part), "params": [float(params[part].min()),
                                                                   float(params[part].max())],
                    "kendall": a["kendall"]})
    return out


def analyse(rating: Sequence[float], truth: np.ndarray, *, lower_is_better: bool = False,
            params: Sequence[float] | None = None, versus: Sequence[float] | None = None,
            versus_name: str = "versus", seeds: Sequence[str] = ("",), n_boot: int = 1000,
            seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The report of one group of units (a run's architectures, or one block's candidates).

    ``rating``: the run's rating per unit (lower is better); ``truth``: the measurement per
    unit, or per unit and seed (NaN where not measured), higher is better unless
    ``lower_is_better``; ``versus``: a second predictor's goodness (higher is better);
    ``params``: a size per unit for the terciles and the partial τ.
    """
    values = np.asarray(truth, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    sign = -1.0 if lower_is_better else 1.0
    t = sign * np.nanmean(values, axis=1)
    g = -np.asarray(rating, dtype=np.float64)
    n = len(g)
    idx = resamples(n, n_boot, seed)
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence, "idx": idx}
    out: dict[str, Any] = {"n": n, "measurements": int(np.isfinite(values).sum())}
    predictors = {"dnax": g}
    if versus is not None:
        predictors[versus_name] = np.asarray(versus, dtype=np.float64)
    p = None if params is None else np.asarray(params, dtype=np.float64)
    if p is not None:
        predictors["params"] = p
    out["predictors"] = {name: {**association(x, t, **kw), **regret(x, t)}
                         for name, x in predictors.items()}
    if versus is not None:
        vs = predictors[versus_name]
        diff = kendall_rows(g[idx], t[idx]) - kendall_rows(vs[idx], t[idx])
        finite = diff[np.isfinite(diff)]
        out["difference"] = {
            "a": "dnax", "b": versus_name,
            "kendall": out["predictors"]["dnax"]["kendall"]["value"]
            - out["predictors"][versus_name]["kendall"]["value"],
            "ci": interval(diff, confidence),
            "p": float((finite <= 0).mean()) if len(finite) else math.nan}
    if p is not None:
        tgt = out["predictors"]["dnax"]["kendall"]["value"]
        tgp = _scipy(g, p)["kendall"][0]
        ttp = out["predictors"]["params"]["kendall"]["value"]
        boot = partial_tau(kendall_rows(g[idx], t[idx]), kendall_rows(g[idx], p[idx]),
                           kendall_rows(t[idx], p[idx]))
        out["partial_kendall"] = {"value": float(partial_tau(tgt, tgp, ttp)),
                                  "ci": interval(boot, confidence)}
        out["terciles"] = _terciles(g, t, p, n_boot, seed, confidence)
    out["noise_ceiling"] = _noise_ceiling(values, seeds, sign, n_boot, seed, confidence)
    return out


def correlate(run: Any, truth: str | os.PathLike, *, column: str | None = None,
              key: str | None = None, versus: str | None = None, versus_lower: bool = False,
              versus_run: Any = None, cost: str = "params", n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95, plot: str | os.PathLike | None = None
              ) -> dict[str, Any]:
    """A ranking-quality report of ``run`` (a run directory or :class:`dnax.Run`) against the
    ground-truth CSV ``truth``; JSON-ready (undefined figures are None).

    ``column``: the measured column (default ``accuracy``, or ``loss`` for block losses);
    ``key``: the run's score (default: the rank stage's key); ``versus``: a second predictor's
    column in the CSV (higher is better unless ``versus_lower``) or ``versus_run``: a second
    run directory, rated like the first; ``cost``: the run's cost metric for the terciles and
    the partial τ; ``n_boot``, ``seed``, ``confidence``: the bootstrap; ``plot``: where to
    draw the scatter PNG.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot: expected at least 1 resample, got {n_boot}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: expected a number between 0 and 1, got {confidence}")
    if versus is not None and versus_run is not None:
        raise ConfigError("versus and versus_run: give one second predictor, not both")
    run, rankings, rank_key = _rankings(run)
    key_arg, key = key, key or rank_key
    _check_key(run, rankings, key)
    t = read_truth(truth, column=column, versus=versus)
    root = run.run_dir.root
    _check_units(t, rankings, root)
    rating = _ratings(t, rankings, key)
    second, second_name = None, versus
    if versus is not None:
        second = -t.versus if versus_lower else t.versus
    elif versus_run is not None:
        run2, rankings2, key2 = _rankings(versus_run)
        if [len(r.candidates) for r in rankings2] != [len(r.candidates) for r in rankings]:
            raise ArtifactError(f"{run2.run_dir.root}: its blocks have "
                                f"{[len(r.candidates) for r in rankings2]} candidates, those "
                                f"of {root} {[len(r.candidates) for r in rankings]}")
        key2 = key_arg or key2
        _check_key(run2, rankings2, key2)
        second, second_name = -_ratings(t, rankings2, key2), str(run2.run_dir.root)
    params, params_source = _params(t, rankings, run.fixed_costs, cost)
    common = {"n_boot": n_boot, "seed": seed, "confidence": confidence, "seeds": t.seeds,
              "lower_is_better": t.kind == BLOCK, "versus_name": second_name or "versus"}
    report: dict[str, Any] = {
        "kind": t.kind, "run_dir": str(root), "truth": str(t.path), "column": t.column,
        "key": key, "seeds": list(t.seeds) if t.seeds != ("",) else [],
        "direction": (f"τ of -{key} (lower is better) against {t.column}" if t.kind == ARCH else
                      f"τ of -{key} against -{t.column} (both lower is better): same as τ of "
                      f"{key} against {t.column}"),
        "versus": second_name, "versus_lower": versus_lower if versus else None,
        "params_source": params_source, "cost": cost,
        "bootstrap": {"n": n_boot, "seed": seed, "confidence": confidence},
    }
    if t.kind == ARCH:
        if len(t.units) < 3:
            raise ArtifactError(f"{t.path}: {len(t.units)} architectures; at least 3 are needed")
        report.update(_units(analyse(rating, t.values, params=params, versus=second,
                                     **common), t.units))
    else:
        groups = []
        for r in rankings:
            rows = np.array([u[0] == r.block for u in t.units])
            if not rows.any():
                continue
            if rows.sum() < 3:
                raise ArtifactError(f"{t.path}: block {r.block}: {rows.sum()} candidates; at "
                                    "least 3 are needed")
            group = analyse(rating[rows], t.values[rows],
                            params=None if params is None else params[rows],
                            versus=None if second is None else second[rows], **common)
            units = [u for u, keep in zip(t.units, rows, strict=True) if keep]
            groups.append({"block": r.block, **_units(group, units)})
        report["blocks"] = groups
    report["points"] = [
        {"unit": list(u), "line": line, "rating": float(rating[k]),
         "truth": float(np.nanmean(t.values[k])),
         "by_seed": {s: float(v) for s, v in zip(t.seeds, t.values[k], strict=True)
                     if math.isfinite(v)} if len(t.seeds) > 1 else None,
         "versus": None if second is None else float(second[k]),
         "params": None if params is None else float(params[k])}
        for k, (u, line) in enumerate(zip(t.units, t.lines, strict=True))]
    report = _json_ready(report)
    report["plot"] = str(scatter_png(report, plot)) if plot is not None else None
    return report


def _units(group: dict[str, Any], units: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    """Name each predictor's top pick and the truly best unit (``top_unit``, ``best_unit``:
    the candidate per block, or [block, candidate]) beside their indices into the group."""
    for p in group["predictors"].values():
        p["top_unit"], p["best_unit"] = list(units[p["top"]]), list(units[p["best"]])
    return group


def _params(t: Truth, rankings: Sequence[BlockRanking], fixed: Mapping[str, float], cost: str
            ) -> tuple[np.ndarray | None, str | None]:
    if all(cost in r.costs for r in rankings):
        if t.kind == ARCH:
            return (network_costs(rankings, np.array(t.units), cost, fixed.get(cost, 0.0)),
                    f"the run's {cost} costs")
        by = {r.block: _block_costs(r, cost) for r in rankings}
        return np.array([by[b][c] for b, c in t.units]), f"the run's {cost} costs"
    if t.params is not None:
        return t.params, f"the 'params' column of {t.path}"
    return None, None


def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --- the scatter ------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def scatter_png(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw a :func:`correlate` report: the run's rating against the truth (one panel, plus one
    for a second predictor; one per block for block losses), the top pick marked; written
    atomically as PNG. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot: drawing the scatter needs matplotlib "
                          "(pip install 'dnax[plot]')") from None
    points = report["points"]
    panels: list[tuple[str, list[int], Mapping[str, Any]]] = []
    if report["kind"] == ARCH:
        everything = list(range(len(points)))
        panels.append(("dnax", everything, report))
        if report["versus"] is not None:
            panels.append(("versus", everything, report))
    else:
        for g in report["blocks"]:
            rows = [k for k, p in enumerate(points) if p["unit"][0] == g["block"]]
            panels.append(("dnax", rows, g))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (which, rows, group) in zip(axes[0], panels, strict=True):
        name = "dnax" if which == "dnax" else report["versus"]
        x = np.array([points[k]["rating"] if which == "dnax" else points[k]["versus"]
                      for k in rows])
        y = np.array([points[k]["truth"] for k in rows])
        spread = [p["by_seed"] for p in (points[k] for k in rows)]
        if all(spread):
            lo = [min(s.values()) for s in spread]
            hi = [max(s.values()) for s in spread]
            ax.errorbar(x, y, yerr=[y - lo, np.array(hi) - y], fmt="none", ecolor="0.7",
                        lw=0.8, label="range over seeds")
        ax.scatter(x, y, s=14, c="tab:blue")
        stats = group["predictors"][name]
        top = stats["top"]
        ax.scatter([x[top]], [y[top]], marker="*", s=180, c="tab:orange", edgecolors="k",
                   zorder=5, label=f"top pick (regret {_fmt(stats['regret'])})")
        tau = stats["kendall"]
        ci = tau["ci"]
        ax.set_title((f"{name}: " if report["kind"] == ARCH else f"block {group['block']}: ")
                     + f"τ {_fmt(tau['value'])} [{_fmt(ci[0])}, {_fmt(ci[1])}], n {group['n']}",
                     fontsize=10)
        ax.set_xlabel(f"summed block {report['key']} (lower is better)" if which == "dnax"
                      and report["kind"] == ARCH else
                      f"{report['key']} (lower is better)" if which == "dnax" else
                      f"{name} (goodness: higher is better)")
        ax.set_ylabel(report["column"])
        ax.legend(fontsize=8)
    fig.suptitle(f"{Path(report['run_dir']).name} against {Path(report['truth']).name}")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
