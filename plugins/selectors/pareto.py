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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dnax.errors import NoFeasibleNetworkError


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

    @property
    def front(self) -> tuple[Network, ...]:
        return tuple(_network(c, s, k) for c, s, k in
                     zip(self.front_choices, self.front_scores, self.front_costs, strict=True))


def solve(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], budgets: Sequence[float],
          *, top_k: int = 1, names: Sequence[str] | None = None,
          fixed: Sequence[float] | None = None) -> Solution:
    """The ``top_k`` best networks and the Pareto front of those within ``budgets``.

    ``scores[i]`` has one entry per candidate of block ``i``; ``costs[i]`` has shape
    ``(candidates, len(budgets))``. Candidates with a non-finite score or cost are skipped.
    ``names`` and ``fixed`` (per metric) only make the :class:`NoFeasibleNetworkError` readable:
    budgets are compared with the summed block costs, so pass them with ``fixed`` subtracted.
    """
    budgets = np.asarray(budgets, dtype=np.float64).reshape(-1)
    m = budgets.size
    names = list(names) if names is not None else [f"cost{j}" for j in range(m)]
    fixed_arr = np.zeros(m) if fixed is None else np.asarray(fixed, dtype=np.float64)
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    blocks = []
    for i, (s, c) in enumerate(zip(scores, costs, strict=True)):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(len(s), m)
        ok = np.flatnonzero(np.isfinite(s) & np.isfinite(c).all(axis=1))
        if ok.size == 0:
            raise NoFeasibleNetworkError(f"block {i}: no candidate has a finite score and cost")
        blocks.append((s[ok], c[ok], ok))

    mins = np.array([c.min(axis=0) for _, c, _ in blocks]).reshape(len(blocks), m)
    cheapest = mins.sum(axis=0)
    over = [j for j in range(m) if cheapest[j] > budgets[j]]
    if over:
        raise NoFeasibleNetworkError("; ".join(
            f"no network fits {names[j]} <= {_num(budgets[j] + fixed_arr[j])}: the cheapest "
            f"costs {_num(cheapest[j] + fixed_arr[j])}" for j in over))

    front = _merge(blocks, mins, budgets, 1, np.inf)
    if front is None:
        raise NoFeasibleNetworkError(_joint_message(blocks, names, budgets, fixed_arr))
    choices, S, C, kept, largest = front
    by_cost = np.lexsort((S, *(C[:, j] for j in range(m - 1, -1, -1))))
    choices, S, C = choices[by_cost], S[by_cost], C[by_cost]
    if top_k > 1:
        bound = _kth_bound(blocks, budgets, choices, S, C, top_k)
        slack = 1e-9 * (abs(bound) + sum(float(np.abs(s).max()) for s, _, _ in blocks))
        top_sets = _merge(blocks, mins, budgets, top_k, bound + slack)
        assert top_sets is not None  # the front's networks fit
        tch, tS, tC, kept, big = top_sets
        largest = max(largest, big)
    else:
        tch, tS, tC = choices, S, C
    keys = [*(tch[:, b] for b in range(tch.shape[1] - 1, -1, -1)),
            *(tC[:, j] for j in range(m - 1, -1, -1)), tS]
    top = tuple(_network(tch[i], tS[i], tC[i]) for i in np.lexsort(keys)[:top_k])
    return Solution(top, choices, S, C, kept, largest)


def _kth_bound(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], budgets: np.ndarray,
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


def _merge(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], mins: np.ndarray,
           budgets: np.ndarray, k: int, bound: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], int] | None:
    """Merge the blocks keeping ``k`` layers of feasible networks scoring at most ``bound``:
    (choices, scores, costs) of the final set, candidates kept per block, largest set."""
    m = budgets.size
    smin = np.array([s.min() for s, _, _ in blocks])
    cost_all, score_all = mins.sum(axis=0), smin.sum()
    pruned = []
    for i, (s, c, idx) in enumerate(blocks):
        limit = budgets - (cost_all - mins[i])
        fit = np.flatnonzero((c <= limit).all(axis=1) & (s + (score_all - smin[i]) <= bound))
        keep = fit[_layers(s[fit], c[fit], k)]
        pruned.append((s[keep], c[keep], idx[keep]))

    order = sorted(range(len(pruned)), key=lambda i: len(pruned[i][0]))
    # rest[t]: the cheapest costs (lowest score) of blocks order[t:]; 0 past the end
    rest = np.vstack([np.cumsum(mins[order[::-1]], axis=0)[::-1], np.zeros((1, m))])
    rest_s = np.concatenate([np.cumsum(smin[order[::-1]])[::-1], [0.0]])
    S, C = pruned[order[0]][0].copy(), pruned[order[0]][1].copy()
    links: list[tuple[np.ndarray, np.ndarray]] = []
    largest = len(S)
    for t in range(1, len(order)):
        s, c, _ = pruned[order[t]]
        ia, ib = _feasible_pairs(C, c, budgets - rest[t + 1])
        S2 = S[ia] + s[ib]
        if bound < np.inf:
            ok = S2 + rest_s[t + 1] <= bound
            ia, ib, S2 = ia[ok], ib[ok], S2[ok]
        largest = max(largest, len(ia))
        C2 = C[ia] + c[ib]
        keep = _layers(S2, C2, k)
        links.append((ia[keep], ib[keep]))
        S, C = S2[keep], C2[keep]
    if len(S) == 0:
        return None
    return (_choices(len(S), order, pruned, links), S, C, tuple(len(p[0]) for p in pruned),
            largest)


def brute_force(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray],
                budgets: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every network's (choices, score, costs), feasible ones only; for tests on tiny instances."""
    import itertools

    budgets = np.asarray(budgets, dtype=np.float64).reshape(-1)
    m = budgets.size
    rows = list(itertools.product(*(range(len(s)) for s in scores)))
    ch = np.array(rows, dtype=np.int64).reshape(len(rows), len(scores))
    sc = np.zeros(len(rows))
    co = np.zeros((len(rows), m))
    for b, (s, c) in enumerate(zip(scores, costs, strict=True)):
        sc = sc + np.asarray(s, dtype=np.float64)[ch[:, b]]
        co = co + np.asarray(c, dtype=np.float64).reshape(len(s), m)[ch[:, b]]
    ok = (co <= budgets).all(axis=1) & np.isfinite(sc) & np.isfinite(co).all(axis=1)
    return ch[ok], sc[ok], co[ok]


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
    # lexicographic order by costs then score: every dominator of a point comes before it
    order = np.lexsort((S, *(C[:, j] for j in range(m - 1, -1, -1))))
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
            layer = alive & ~_dominated_2(Cs[:, 1], Ss, alive)
        else:
            layer = alive & ~_dominated_n(Ss, Cs, alive)
        kept_sorted |= layer
        alive &= ~layer
    keep[order] = kept_sorted
    return keep


def _dense_rank(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].astype(np.int64)


def _dominated_2(y: np.ndarray, s: np.ndarray, alive: np.ndarray, base: int = 64) -> np.ndarray:
    """Points sorted by their first cost: is there an earlier alive point with second cost
    ``<= y`` and score ``<= s``? Brute force within runs of ``base`` points, then an offline
    divide and conquer over runs, one vectorised pass per level."""
    n = len(y)
    yr, zr = _dense_rank(y), _dense_rank(s)
    inf = n + 1
    zv = np.where(alive, zr, inf)
    pad = -n % base
    Y = np.concatenate([yr, np.full(pad, inf)]).reshape(-1, base)
    Zv = np.concatenate([zv, np.full(pad, inf)]).reshape(-1, base)
    Z = np.concatenate([zr, np.full(pad, -1)]).reshape(-1, base)
    earlier = np.tri(base, k=-1, dtype=bool)  # [p, q]: q before p
    near = (earlier[None] & (Y[:, None, :] <= Y[:, :, None])
            & (Zv[:, None, :] <= Z[:, :, None])).any(axis=2).reshape(-1)[:n]
    pos = np.argsort(yr, kind="stable")  # by y, ties by position (left halves come first)
    best = np.full(n, inf, dtype=np.int64)
    w = base
    while w < n:
        seg = pos // (2 * w)
        o = np.argsort(seg.astype(np.uint16) if seg[-1] < 1 << 16 else seg, kind="stable")
        p, sg = pos[o], seg[o]
        left = (p % (2 * w)) < w
        offset = (sg[-1] - sg) * (inf + 1)
        run = np.minimum.accumulate(np.where(left, zv[p], inf) + offset) - offset
        right = p[~left]
        best[right] = np.minimum(best[right], run[~left])
        w *= 2
    return near | (best <= zr)


def _dominated_n(S: np.ndarray, C: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Brute-force dominance for three or more costs (points sorted as in :func:`_layers`)."""
    n, m = C.shape
    out = np.zeros(n, dtype=bool)
    chunk = max(1, (1 << 22) // max(1, n * (m + 1)))
    idx = np.arange(n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        le = (C[None, :, :] <= C[a:b, None, :]).all(axis=2) & (S[None, :] <= S[a:b, None])
        le &= alive[None, :] & (idx[None, :] < idx[a:b, None])
        out[a:b] = le.any(axis=1)
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

def _choices(n: int, order: list[int], pruned: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
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


def _joint_message(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str],
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
