"""Exact multiple-choice knapsack by merging per-block Pareto fronts (numpy only, no torch).

Each block offers candidates with a score (lower is better) and one cost per budgeted metric. A
network takes one candidate per block; its score and costs are the sums over blocks. :func:`solve`
returns the ``top_k`` feasible networks of lowest score and the Pareto front (score vs costs) of
every feasible network, both exactly.

Why pruning keeps it exact: call ``q`` a dominator of ``p`` when ``q`` is no worse in the score and
every cost (identical points: the earlier one dominates). A candidate with ``k`` or more
dominators can be swapped for each of ``k`` of them in any network that uses it, giving ``k``
distinct networks that fit the same budgets with no higher score; so it is never needed among the
``k`` best, nor on the front. The same holds for a partial network (several blocks merged), since
the remaining blocks are chosen independently. The solver therefore keeps, per block and after
every merge, the first ``k`` non-dominated layers (a superset of the points with fewer than ``k``
dominators), and drops partial networks whose costs plus the cheapest completion exceed a budget.

For ``top_k > 1`` a first merge (``k = 1``) gives the front; a second one keeps ``top_k`` layers
but only of networks that can still score at most ``B``, an upper bound on the ``top_k``-th best
score (the ``top_k``-th best of as many distinct feasible networks, taken from the front and from
one-block swaps of its best network), so every network among the ``top_k`` best passes. The test
is Lagrangian: for any multipliers ``lam >= 0`` and any feasible network ``N``, ``score(N) >=
score(N) + lam @ (costs(N) - budgets)``, which is the sum over the blocks of the chosen
candidates' weights ``score + lam @ costs``, minus ``lam @ budgets``. So a candidate or partial
network whose weight plus the least weight of each remaining block exceeds ``B + lam @ budgets``
completes into no feasible network scoring at most ``B``, and is dropped (with a relative slack
of 1e-9 for rounding). Any ``lam >= 0`` is exact (``lam = 0`` is the plain score bound);
:func:`_multipliers` picks one near the maximum of the Lagrangian dual, which makes the test
tight: on the paper-sized benchmark (two budgets, top-5) it leaves 138 candidates in all, not
729. The last merge keeps every complete network scoring at most ``B`` rather than layers, since
nothing is merged after it; the ``top_k`` best are among them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dnax.errors import NoFeasibleNetworkError

Block = tuple[np.ndarray, np.ndarray, np.ndarray]  # scores, costs, candidate indices


@dataclass(frozen=True)
class Network:
    """One candidate index per block, the summed score and the summed costs (budget order)."""

    choice: tuple[int, ...]
    score: float
    costs: tuple[float, ...]


@dataclass(frozen=True)
class Solution:
    """The ``top`` networks (best first) and the Pareto front of the feasible networks as arrays
    sorted by ascending costs: ``front_choices`` (networks x blocks), ``front_scores``,
    ``front_costs`` (networks x budgets)."""

    top: tuple[Network, ...]
    front_choices: np.ndarray
    front_scores: np.ndarray
    front_costs: np.ndarray
    #: candidates per block left after pruning, and the largest intermediate set merged
    kept: tuple[int, ...]
    largest: int
    #: whether ``top`` is proven best; otherwise ``lower_bound`` bounds the best score
    optimal: bool = True
    lower_bound: float | None = None
    #: "pareto" (front merge, one or two budgets: the front is complete) or "core"
    #: (Lagrangian core, three or more: the front holds the top networks only)
    method: str = "pareto"

    @property
    def gap(self) -> float:
        """Proven relative optimality gap of the best network (0 when optimal)."""
        if self.optimal or self.lower_bound is None:
            return 0.0
        best = self.top[0].score
        return float((best - self.lower_bound) / max(abs(best), 1e-12))

    @property
    def front(self) -> tuple[Network, ...]:
        return tuple(_network(c, s, k) for c, s, k in
                     zip(self.front_choices, self.front_scores, self.front_costs, strict=True))


def solve(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], budgets: Sequence[float],
          *, top_k: int = 1, names: Sequence[str] | None = None,
          fixed: Sequence[float] | None = None, time_limit: float | None = None,
          progress: Callable[[str, float], None] | None = None,
          links: Sequence[np.ndarray] | None = None) -> Solution:
    """The ``top_k`` best networks and the Pareto front of those within ``budgets``.

    ``scores[i]`` has one entry per candidate of block ``i``; ``costs[i]`` has shape
    ``(candidates, len(budgets))``. Candidates with a non-finite score or cost are skipped.
    ``names`` and ``fixed`` (per metric) only make the :class:`NoFeasibleNetworkError` readable:
    budgets are compared with the summed block costs, so pass them with ``fixed`` subtracted.

    With one or two budgets the front merge solves it (the front is complete); with three or
    more, :func:`dnax.plugins.selectors.knapsack.solve_core` (the front then holds the top
    networks' non-dominated ones). ``time_limit`` (seconds) and ``progress`` apply to the
    latter: past the limit it returns the best networks found, ``optimal=False``, and the proven
    ``lower_bound``.

    Where a block's costs depend on the width the previous block passes on, ``costs[i]`` is
    (rows, candidates, budgets) and ``links[i - 1][j]`` the row that candidate ``j`` of block
    ``i - 1`` selects (see ``dnax.BlockRanking``); the core solver then solves it, whatever the
    number of budgets.
    """
    budgets = np.asarray(budgets, dtype=np.float64).reshape(-1)
    m = budgets.size
    names = list(names) if names is not None else [f"cost{j}" for j in range(m)]
    fixed_arr = np.zeros(m) if fixed is None else np.asarray(fixed, dtype=np.float64)
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    blocks: list[Block] = []
    cubes: list[np.ndarray] = []
    for i, (s, c) in enumerate(zip(scores, costs, strict=True)):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64)  # (rows, candidates, m) or (candidates, m)
        c = c.reshape(-1, len(s), m) if c.size else np.zeros((1, len(s), m))
        ok = np.flatnonzero(np.isfinite(s) & np.isfinite(c).all(axis=(0, 2)))
        if ok.size == 0:
            raise NoFeasibleNetworkError(f"block {i}: no candidate has a finite score and cost")
        blocks.append((s[ok], c[:, ok].min(axis=0), ok))  # the cheapest row where several
        cubes.append(c[:, ok])
    coupled = any(c.shape[0] > 1 for c in cubes)

    mins = np.array([c.min(axis=0) for _, c, _ in blocks]).reshape(len(blocks), m)
    cheapest = mins.sum(axis=0)
    over = [j for j in range(m) if cheapest[j] > budgets[j]]
    if over:
        raise NoFeasibleNetworkError("; ".join(
            f"no network fits {names[j]} <= {_num(budgets[j] + fixed_arr[j])}: the cheapest "
            f"costs {_num(cheapest[j] + fixed_arr[j])}" for j in over))

    if m >= 3 or coupled:
        link = None
        if coupled:
            if links is None:
                raise ValueError("costs with several rows need links")
            link = [np.asarray(x)[ok] for x, (_, _, ok) in zip(links, blocks, strict=False)]
        return _solve_core(blocks, cubes, link, budgets, top_k, names, fixed_arr, time_limit,
                           progress)
    front = _merge(blocks, mins, budgets, 1, np.inf, np.zeros(m))
    if front is None:
        raise NoFeasibleNetworkError(_joint_message(blocks, names, budgets, fixed_arr))
    by_cost = np.lexsort((front.S, *(front.C[:, j] for j in range(m - 1, -1, -1))))
    choices, S, C = front.choices[by_cost], front.S[by_cost], front.C[by_cost]
    kept, largest = tuple(len(p[0]) for p in front.blocks), front.largest
    if top_k > 1:
        bound = _kth_bound(blocks, budgets, choices, S, C, top_k)
        lam = _multipliers(front.blocks, budgets) if np.isfinite(bound) else np.zeros(m)
        top_sets = _merge(blocks, mins, budgets, top_k, bound, lam)
        assert top_sets is not None  # the front's networks fit
        tch, tS, tC = top_sets.choices, top_sets.S, top_sets.C
        kept, largest = tuple(len(p[0]) for p in top_sets.blocks), max(largest, top_sets.largest)
    else:
        tch, tS, tC = choices, S, C
    keys = [*(tch[:, b] for b in range(tch.shape[1] - 1, -1, -1)),
            *(tC[:, j] for j in range(m - 1, -1, -1)), tS]
    top = tuple(_network(tch[i], tS[i], tC[i]) for i in np.lexsort(keys)[:top_k])
    return Solution(top, choices, S, C, kept, largest)


def _solve_core(blocks: list[Block], cubes: list[np.ndarray], links: list[np.ndarray] | None,
                budgets: np.ndarray, top_k: int, names: list[str], fixed: np.ndarray,
                time_limit: float | None, progress: Callable[[str, float], None] | None
                ) -> Solution:
    from .knapsack import solve_core

    try:
        res = solve_core([s for s, _, _ in blocks], cubes, budgets, links=links, top_k=top_k,
                         time_limit=time_limit, progress=progress)
    except NoFeasibleNetworkError as e:
        if "time limit" in str(e):
            raise
        raise NoFeasibleNetworkError(_joint_message(blocks, names, budgets, fixed)) from None
    idx = [ok for _, _, ok in blocks]
    choices = np.array([[idx[b][j] for b, j in enumerate(row)] for row in res.choices],
                       dtype=np.int64).reshape(len(res.scores), len(blocks))
    top = tuple(_network(c, s, k) for c, s, k in zip(choices, res.scores, res.costs,
                                                      strict=True))
    points = np.column_stack([res.scores, res.costs])
    _, distinct = np.unique(points, axis=0, return_index=True)  # one network per point
    undominated = np.zeros(len(points), dtype=bool)
    undominated[[i for i in distinct if not any(
        (q <= points[i]).all() and (q < points[i]).any() for q in points)]] = True
    by_cost = np.lexsort((res.scores[undominated],
                          *(res.costs[undominated][:, j] for j in range(budgets.size - 1, -1,
                                                                        -1))))
    return Solution(top, choices[undominated][by_cost], res.scores[undominated][by_cost],
                    res.costs[undominated][by_cost], res.core, res.largest,
                    optimal=res.optimal, lower_bound=res.lower_bound, method="core")


@dataclass(frozen=True)
class _Merged:
    """The final set of a merge (choices, scores, costs), the pruned blocks, the largest set."""

    choices: np.ndarray
    S: np.ndarray
    C: np.ndarray
    blocks: list[Block]
    largest: int


def _kth_bound(blocks: list[Block], budgets: np.ndarray,
               choices: np.ndarray, S: np.ndarray, C: np.ndarray, k: int) -> float:
    """An upper bound on the k-th best feasible score: the k-th best of k distinct feasible
    networks, taken from the front and from one-block swaps of its best network."""
    bound = np.sort(S)[k - 1] if len(S) >= k else np.inf
    best = int(np.argmin(S))
    found = [np.array([S[best]])]
    for i, (s, c, idx) in enumerate(blocks):
        cur = int(np.searchsorted(idx, choices[best, i]))
        ok = (C[best] - c[cur] + c <= budgets).all(axis=1)
        ok[cur] = False
        found.append(S[best] - s[cur] + s[ok])
    swaps = np.concatenate(found)
    if len(swaps) >= k:
        bound = min(bound, float(np.partition(swaps, k - 1)[k - 1]))
    return float(bound)


def _multipliers(blocks: list[Block], budgets: np.ndarray, steps: int = 40) -> np.ndarray:
    """Multipliers ``lam >= 0`` near the maximum of the Lagrangian dual ``sum over blocks of
    min(score + lam @ costs) - lam @ budgets`` (a lower bound on every feasible score): the best
    of ``lam = t * scale`` for t in 0 and powers of two, then a pattern search in steps of
    ``delta * scale`` (each coordinate -1, 0 or +1; one at a time past 4 budgets) that halves
    ``delta`` when no move helps. ``scale``: the blocks' score ranges over their cost ranges.
    ``blocks``: each block's candidates that are not dominated (the others never matter)."""
    m = budgets.size
    if m == 0:
        return np.zeros(0)
    s = np.concatenate([b[0] for b in blocks])
    c = np.concatenate([b[1] for b in blocks])
    starts = np.cumsum([0, *(len(b[0]) for b in blocks[:-1])])
    span_c = sum(np.ptp(b[1], axis=0) for b in blocks)
    scale = np.divide(sum(float(np.ptp(b[0])) for b in blocks), span_c,
                      out=np.zeros(m), where=span_c > 0)

    def dual(u: np.ndarray) -> np.ndarray:
        lams = u * scale
        return np.minimum.reduceat(s + lams @ c.T, starts, axis=1).sum(axis=1) - lams @ budgets

    t = np.concatenate(([0.0], 2.0 ** np.arange(-8, 9)))
    v = dual(t[:, None] * np.ones(m))
    u, best = np.full(m, t[int(np.argmax(v))]), float(v.max())
    moves = (np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * m)).reshape(m, -1).T if m <= 4
             else np.vstack([np.zeros(m), np.eye(m), -np.eye(m)]))
    delta = max(float(u[0]), 1.0) / 2
    for _ in range(steps):
        cand = np.maximum(u + delta * moves, 0.0)
        v = dual(cand)
        i = int(np.argmax(v))
        if v[i] > best:
            u, best = cand[i], float(v[i])
        else:
            delta /= 2
    return u * scale


def _prune(blocks: list[Block], mins: np.ndarray, budgets: np.ndarray, k: int, bound: float,
           lam: np.ndarray) -> list[Block] | None:
    """Per block, the first ``k`` layers of the candidates that fit the budgets with the
    cheapest other blocks and whose weight (``score + lam @ costs``) plus the least weights of
    the other blocks is at most ``bound + lam @ budgets``; None when a block has none left."""
    cost_all = mins.sum(axis=0)
    fit = [np.flatnonzero((c <= budgets - (cost_all - mins[i])).all(axis=1))
           for i, (_, c, _) in enumerate(blocks)]
    if any(f.size == 0 for f in fit):
        return None
    w = [s[f] + c[f] @ lam for (s, c, _), f in zip(blocks, fit, strict=True)]
    wmin = np.array([x.min() for x in w])
    limit = bound + lam @ budgets + _slack(bound, lam, budgets, w)
    pruned = []
    for i, ((s, c, idx), f, wi) in enumerate(zip(blocks, fit, w, strict=True)):
        f = f[wi + (wmin.sum() - wmin[i]) <= limit]
        keep = f[_layers(s[f], c[f], k)]
        pruned.append((s[keep], c[keep], idx[keep]))
    return pruned if all(len(p[0]) for p in pruned) else None


def _slack(bound: float, lam: np.ndarray, budgets: np.ndarray, w: list[np.ndarray]) -> float:
    """Room for rounding when comparing summed weights with the bound (0 for no bound)."""
    if not np.isfinite(bound):
        return 0.0
    return 1e-9 * (abs(bound) + abs(float(lam @ budgets)) + sum(float(np.abs(x).max()) for x in w))


def _merge(blocks: list[Block], mins: np.ndarray, budgets: np.ndarray, k: int, bound: float,
           lam: np.ndarray) -> _Merged | None:
    """Merge the blocks keeping ``k`` layers of feasible networks that can score at most
    ``bound`` by the Lagrangian test with multipliers ``lam`` (see the module's docstring)."""
    m = budgets.size
    pruned = _prune(blocks, mins, budgets, k, bound, lam)
    if pruned is None:
        return None
    order = sorted(range(len(pruned)), key=lambda i: len(pruned[i][0]))
    w = [s + c @ lam for s, c, _ in pruned]
    wmin = np.array([x.min() for x in w])
    tol = _slack(bound, lam, budgets, w)
    limit = bound + lam @ budgets + tol
    # rest[t]: the cheapest costs of blocks order[t:]; rest_w[t]: their least weights; 0 past end
    rest = np.vstack([np.cumsum(mins[order[::-1]], axis=0)[::-1], np.zeros((1, m))])
    rest_w = np.concatenate([np.cumsum(wmin[order[::-1]])[::-1], [0.0]])
    S, C, W = pruned[order[0]][0].copy(), pruned[order[0]][1].copy(), w[order[0]].copy()
    links: list[tuple[np.ndarray, np.ndarray]] = []
    largest = len(S)
    for t in range(1, len(order)):
        s, c, _ = pruned[order[t]]
        ia, ib = _feasible_pairs(C, c, budgets - rest[t + 1])
        if bound < np.inf:
            ok = W[ia] + w[order[t]][ib] + rest_w[t + 1] <= limit
            ia, ib = ia[ok], ib[ok]
        largest = max(largest, len(ia))
        S2, C2 = S[ia] + s[ib], C[ia] + c[ib]
        if t == len(order) - 1 and bound < np.inf:  # complete networks: the k best score <= bound
            keep = np.flatnonzero(S2 - bound <= tol)
        else:
            keep = _layers(S2, C2, k)
        links.append((ia[keep], ib[keep]))
        S, C, W = S2[keep], C2[keep], W[ia[keep]] + w[order[t]][ib[keep]]
    if len(S) == 0:
        return None
    return _Merged(_choices(len(S), order, pruned, links), S, C, pruned, largest)


# --- pruning ---------------------------------------------------------------------------------

def _layers(S: np.ndarray, C: np.ndarray, k: int) -> np.ndarray:
    """Mask of the points in the first ``k`` non-dominated layers of ``(S, C)`` (minimised)."""
    n, m = C.shape
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    if m == 0:
        keep[np.argsort(S, kind="stable")[:k]] = True
        return keep
    # lexicographic order by costs then score: every dominator of a point comes before it (a
    # quicksort by score, then stable by costs: much faster than a stable sort of the scores)
    order = np.argsort(S)
    order = order[np.lexsort([C[order, j] for j in range(m - 1, -1, -1)])]
    Ss, Cs = S[order], C[order]
    alive = np.ones(n, dtype=bool)
    kept_sorted = np.zeros(n, dtype=bool)
    for _ in range(k):
        if not alive.any():
            break
        if m == 1:
            v = np.where(alive, Ss, np.inf)
            prev = np.concatenate(([np.inf], np.minimum.accumulate(v)[:-1]))
            layer = alive & (Ss < prev)
        elif m == 2:
            live = np.flatnonzero(alive)
            layer = np.zeros(n, dtype=bool)
            layer[live[_undominated_2(Cs[live, 1], Ss[live])]] = True
        else:
            live = np.flatnonzero(alive)
            layer = np.zeros(n, dtype=bool)
            layer[live[_undominated_n(np.column_stack([Cs[live], Ss[live]]))]] = True
        kept_sorted |= layer
        alive &= ~layer
    keep[order] = kept_sorted
    return keep


def _dense_rank(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].astype(np.int64)


def _undominated_2(y: np.ndarray, s: np.ndarray, parts: int = 16) -> np.ndarray:
    """Points sorted by their first cost: mask of those with no earlier point of second cost
    ``<= y`` and score ``<= s``. Sweeps ``parts`` runs keeping the staircase (second cost
    ascending, score falling) of the undominated points of the runs before, which answers that
    question for a run's points with one binary search; :func:`_dominated_2` settles the few
    that pass among themselves (by transitivity nothing else can dominate them). Where most
    points are undominated the staircase cannot help: :func:`_dominated_2` takes them all."""
    n = len(y)
    out = np.zeros(n, dtype=bool)
    sy, ss = np.array([-np.inf]), np.array([np.inf])  # a sentinel step
    step = max(64, -(-n // parts))
    for a in range(0, n, step):
        yc, sc = y[a:a + step], s[a:a + step]
        free = np.flatnonzero(ss[np.searchsorted(sy, yc, side="right") - 1] > sc)
        new = free[~_dominated_2(yc[free], sc[free])]
        if a == 0 and 2 * len(new) > len(yc) and n > step:
            return ~_dominated_2(y, s)
        out[a + new] = True
        sy, ss = _staircase(np.concatenate([sy, yc[new]]), np.concatenate([ss, sc[new]]))
    return out


def _staircase(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points no other beats in both ``y`` and ``s`` (one per tie), ``y`` ascending; the
    first point (the sentinel, lowest ``y``) always stays."""
    o = np.lexsort((s, y))
    y, s = y[o], s[o]
    keep = s < np.concatenate(([np.inf], np.minimum.accumulate(s)[:-1]))
    keep[0] = True
    return y[keep], s[keep]


def _dominated_2(y: np.ndarray, s: np.ndarray, base: int = 64) -> np.ndarray:
    """Points sorted by their first cost: is there an earlier point with second cost ``<= y``
    and score ``<= s``? Brute force within runs of ``base`` points, then an offline divide and
    conquer over runs, one vectorised pass per level."""
    n = len(y)
    if n <= base:
        earlier = np.tri(n, k=-1, dtype=bool)  # [p, q]: q before p
        return (earlier & (y[None, :] <= y[:, None]) & (s[None, :] <= s[:, None])).any(axis=1)
    yr, zr = _dense_rank(y), _dense_rank(s)
    inf = n + 1
    pad = -n % base
    Y = np.concatenate([yr, np.full(pad, inf)]).reshape(-1, base)
    Zv = np.concatenate([zr, np.full(pad, inf)]).reshape(-1, base)
    Z = np.concatenate([zr, np.full(pad, -1)]).reshape(-1, base)
    earlier = np.tri(base, k=-1, dtype=bool)  # [p, q]: q before p
    near = (earlier[None] & (Y[:, None, :] <= Y[:, :, None])
            & (Zv[:, None, :] <= Z[:, :, None])).any(axis=2).reshape(-1)[:n]
    pos = np.argsort(yr, kind="stable")  # by y, ties by position (left halves come first)
    best = np.full(n, inf, dtype=np.int64)
    w = base
    while w < n:
        seg = pos // (2 * w)
        o = np.argsort(seg.astype(np.uint16) if n < 1 << 23 else seg, kind="stable")
        p, sg = pos[o], seg[o]
        left = (p % (2 * w)) < w
        offset = (sg[-1] - sg) * (inf + 1)
        run = np.minimum.accumulate(np.where(left, zr[p], inf) + offset) - offset
        right = p[~left]
        best[right] = np.minimum(best[right], run[~left])
        w *= 2
    return near | (best <= zr)


def _undominated_n(P: np.ndarray, most: int = 1024) -> np.ndarray:
    """Rows (costs, then score) in the order of :func:`_layers`: mask of those that no earlier
    row matches or beats in every column. Runs of rows are checked against the undominated
    rows of the runs before (by transitivity nothing else can dominate them), then the few
    that pass against each other; runs shrink as that front grows, to bound the memory."""
    n, d = P.shape
    out = np.zeros(n, dtype=bool)
    front = np.empty((0, d))
    a = 0
    while a < n:
        step = max(16, min(most, (1 << 22) // max(1, len(front) * d)))
        x = P[a:a + step]
        free = np.flatnonzero(~(front[None] <= x[:, None]).all(axis=2).any(axis=1))
        y = x[free]
        earlier = np.tri(len(y), k=-1, dtype=bool)  # [p, q]: q before p
        new = free[~(earlier & (y[None] <= y[:, None]).all(axis=2)).any(axis=1)]
        out[a + new] = True
        front = np.vstack([front, x[new]])
        a += step
    return out


def _feasible_pairs(C: np.ndarray, c: np.ndarray, limit: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(a, b)`` with ``C[a] + c[b] <= limit`` in every cost."""
    n, m = C.shape
    if m == 0:
        ia, ib = np.divmod(np.arange(n * len(c)), len(c))
        return ia, ib
    # sorted by the first cost, the b's that fit with a given a form a prefix: enumerate only those
    ob = np.argsort(c[:, 0], kind="stable")
    cb = c[ob, 0]
    count = np.searchsorted(cb, limit[0] - C[:, 0], side="right")
    total = int(count.sum())
    ia = np.repeat(np.arange(n), count)
    start = np.cumsum(count) - count
    ib = ob[np.arange(total) - np.repeat(start, count)]
    if m > 1:
        ok = ((C[ia, 1:] + c[ib, 1:]) <= limit[1:]).all(axis=1)
        ia, ib = ia[ok], ib[ok]
    return ia, ib


# --- results ---------------------------------------------------------------------------------

def _choices(n: int, order: list[int], pruned: list[Block],
             links: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.zeros((n, len(order)), dtype=np.int64)
    cur = np.arange(n)
    for t in range(len(order) - 1, 0, -1):
        ia, ib = links[t - 1]
        out[:, order[t]] = pruned[order[t]][2][ib[cur]]
        cur = ia[cur]
    out[:, order[0]] = pruned[order[0]][2][cur]
    return out


def _network(choice: np.ndarray, score: float, costs: np.ndarray) -> Network:
    return Network(tuple(int(i) for i in choice), float(score), tuple(float(c) for c in costs))


def _num(x: float) -> str:
    return f"{x:.6g}"


def _joint_message(blocks: list[Block], names: list[str],
                   budgets: np.ndarray, fixed: np.ndarray) -> str:
    limits = " and ".join(f"{n} <= {_num(b + f)}" for n, b, f in zip(names, budgets, fixed,
                                                                      strict=True))
    parts = []
    for j, name in enumerate(names):
        picks = [c[np.argmin(c[:, j])] for _, c, _ in blocks]
        total = np.sum(picks, axis=0) + fixed
        parts.append(f"the cheapest by {name} costs " + ", ".join(
            f"{n} {_num(v)}" for n, v in zip(names, total, strict=True)))
    return f"no network fits {limits} at once: " + "; ".join(parts)
