"""Exact multiple-choice knapsack under any number of budgets: Lagrangian bound + reduced-cost
core enumeration (numpy and scipy's HiGHS LP, no torch).

Each block offers candidates with a score (lower is better) and one cost per budget; a network
takes one candidate per block, its score and costs are the sums. For multipliers ``lam >= 0``
(one per budget, from the LP relaxation's duals, which maximise the bound), give candidate ``j``
of block ``i`` the weight ``w = s + lam @ c`` and the *reduced cost* ``r = w - min_j w`` (>= 0).
For every feasible network ``N``::

    score(N) = sum(r) + LB + lam @ (budgets - costs(N)) >= sum(r) + LB,
    LB = sum_i min_j w_ij - lam @ budgets,

so a network scoring at most ``U`` has ``sum(r) <= U - LB``. The solver enumerates, block by
block with vectorised merges, every partial network whose reduced costs sum to at most a gap
``g`` and whose costs plus the cheapest completion fit every budget, and keeps the ``top_k``
feasible networks of lowest score. When the ``top_k``-th of them scores at most ``LB + g``,
no network outside the enumeration can beat it: the answer is exact. Otherwise ``g`` grows
(x4) and the enumeration runs again, pruned also by the score bound from the networks found.

A ``time_limit`` stops it between or inside passes; it then returns the best networks found
and a proven lower bound on the optimum (``LB + g`` of the last complete pass), so the
optimality gap it reports is proven, not estimated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dnax.errors import NoFeasibleNetworkError

#: most partial networks held at once in a pass before it is cut short (memory guard)
MAX_ROWS = 4_000_000
#: relative slack for rounding in the bound tests
EPS = 1e-9


@dataclass(frozen=True)
class CoreResult:
    """The ``top_k`` networks (choice per block, score, costs), best first, and the proof."""

    choices: np.ndarray  # (networks, blocks): positions in each block's candidate list
    scores: np.ndarray
    costs: np.ndarray  # (networks, budgets)
    lower_bound: float  # proven lower bound on the best score
    optimal: bool
    passes: int
    largest: int  # most partial networks held at once
    core: tuple[int, ...]  # candidates per block within the last gap


class _Timeout(Exception):
    pass


def lagrangian(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], budgets: np.ndarray
               ) -> tuple[np.ndarray | None, float]:
    """Multipliers maximising the Lagrangian bound (the LP relaxation's duals, by HiGHS), and
    the LP's optimum; ``(None, inf)`` when even the LP relaxation is infeasible. ``costs[i]``
    is (candidates, budgets)."""
    import scipy.sparse as sp
    from scipy.optimize import linprog

    m = budgets.size
    if m == 0:
        return np.zeros(0), float(sum(s.min() for s in scores))
    sizes = [len(s) for s in scores]
    n = sum(sizes)
    scale = np.where(budgets > 0, budgets, 1.0)
    a_ub = (np.concatenate(costs) / scale).T
    rows = np.repeat(np.arange(len(sizes)), sizes)
    a_eq = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(sizes), n))
    res = linprog(np.concatenate(scores), A_ub=a_ub, b_ub=budgets / scale, A_eq=a_eq,
                  b_eq=np.ones(len(sizes)), bounds=(0, 1), method="highs")
    if res.status == 2:
        return None, np.inf
    if res.status != 0:  # numerical trouble: lam = 0 is always a valid (weaker) bound
        return np.zeros(m), -np.inf
    return np.maximum(-np.asarray(res.ineqlin.marginals), 0.0) / scale, float(res.fun)


@dataclass(frozen=True)
class _Block:
    """One block prepared for enumeration: per row (width entering it) the candidates sorted by
    reduced cost; its scores, costs (rows, candidates, budgets) and links (next block's row)."""

    red: tuple[np.ndarray, ...]
    order: tuple[np.ndarray, ...]
    scores: np.ndarray
    costs: np.ndarray
    links: np.ndarray

    def core(self, gap: float) -> tuple[int, ...]:
        return tuple(int(np.searchsorted(r, gap, side="right")) for r in self.red)


def solve_core(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], budgets: np.ndarray,
               *, links: Sequence[np.ndarray] | None = None, top_k: int = 1,
               time_limit: float | None = None,
               progress: Callable[[str, float], None] | None = None) -> CoreResult:
    """The ``top_k`` best networks within ``budgets`` (see the module docstring).

    ``scores[i]`` (candidates,) and ``costs[i]`` (candidates, budgets) must be finite. Where
    the cost of a block depends on the width the previous block passes on, ``costs[i]`` is
    (rows, candidates, budgets) and ``links[i - 1][j]`` is the row of block ``i`` that candidate
    ``j`` of block ``i - 1`` selects; the bound then follows the chain (a shortest path over the
    rows) and blocks are merged in order. ``progress(message, lower_bound)`` is called after
    every pass.
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    budgets = np.asarray(budgets, dtype=np.float64)
    m = budgets.size
    cube = [np.asarray(c, dtype=np.float64).reshape(-1, len(s), m) if np.size(c)
            else np.zeros((1, len(s), m)) for s, c in zip(scores, costs, strict=True)]
    coupled = any(c.shape[0] > 1 for c in cube)
    nxt = [np.zeros(len(s), dtype=np.int64) for s in scores]
    if links is not None:
        for i, link in enumerate(links[: len(scores) - 1]):
            nxt[i] = np.asarray(link, dtype=np.int64)
    lam, _ = lagrangian(scores, [c.min(axis=0) for c in cube], budgets)
    if lam is None:
        raise NoFeasibleNetworkError("no network fits all budgets at once (even the LP "
                                     "relaxation is infeasible)")
    # reduced costs along the chain: V_i(row) = min_j w_i(row, j) + V_{i+1}(link(j))
    value = np.zeros(1)
    prepared: list[_Block] = []
    for i in range(len(scores) - 1, -1, -1):
        w = scores[i][None, :] + cube[i] @ lam + value[nxt[i]][None, :]
        row_min = w.min(axis=1)
        red = w - row_min[:, None]
        order = tuple(np.argsort(r, kind="stable") for r in red)
        prepared.append(_Block(tuple(r[o] for r, o in zip(red, order, strict=True)), order,
                               scores[i], cube[i], nxt[i]))
        value = row_min
    blocks = prepared[::-1]
    if cube[0].shape[0] != 1:
        raise ValueError("the first block has one entering width")
    lb = float(value[0] - lam @ budgets)
    cmin = np.array([c.min(axis=(0, 1)) for c in cube]).reshape(len(cube), m)
    smin = np.array([s.min() for s in scores])
    scale = max(1.0, abs(lb))
    spread = float(np.median([np.median(b.red[0]) for b in blocks]))
    gap = max(EPS * scale, 1e-3 * spread)
    best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    proven, passes, largest, core = lb, 0, 0, ()
    full = float(sum(max(r[-1] for r in b.red) for b in blocks))  # every network lies within
    while True:
        if passes and deadline is not None and time.monotonic() > deadline:
            break
        bound = np.inf if best is None or len(best[1]) < top_k else float(best[1][-1])
        try:  # the first pass (the smallest gap) always runs to its end
            # the slack: a network's reduced costs, summed in floating point, may exceed the
            # exact sum (at gap = full, every network must be enumerated)
            found, rows, core = _enumerate(blocks, coupled, cmin, smin, budgets,
                                           gap + EPS * max(scale, full), bound,
                                           top_k, deadline if passes else None)
        except _Timeout:
            break
        passes += 1
        largest = max(largest, rows)
        if found is not None:
            best = _top(best, found, top_k)
        proven = lb + gap
        complete = best is not None and len(best[1]) == top_k
        kth = float(best[1][-1]) if complete else np.inf
        if progress is not None:
            progress(f"pass {passes}: gap {gap:.3g}, {0 if best is None else len(best[1])} "
                     f"networks found", proven)
        if complete and kth <= lb + gap + EPS * scale:
            proven = max(float(best[1][0]), lb)
            return CoreResult(*best, lower_bound=proven, optimal=True, passes=passes,
                              largest=largest, core=core)
        if gap >= full:
            if best is None:
                raise NoFeasibleNetworkError("no network fits all budgets at once")
            return CoreResult(*best, lower_bound=float(best[1][0]), optimal=True,
                              passes=passes, largest=largest, core=core)
        gap = min(full, gap * 4, kth - lb)
    if best is None:
        raise NoFeasibleNetworkError(f"no network found within the time limit "
                                     f"({time_limit:g} s); raise $.selector.time_limit")
    return CoreResult(*best, lower_bound=min(proven, float(best[1][0])), optimal=False,
                      passes=passes, largest=largest, core=core)


def _top(best: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
         found: tuple[np.ndarray, np.ndarray, np.ndarray], k: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if best is not None:
        found = tuple(np.concatenate([a, b]) for a, b in zip(best, found, strict=True))
        _, first = np.unique(found[0], axis=0, return_index=True)  # a network found twice
        found = tuple(x[first] for x in found)
    order = np.lexsort((*found[0].T[::-1], found[1]))[:k]
    return found[0][order], found[1][order], found[2][order]


def _enumerate(blocks: list[_Block], coupled: bool, cmin: np.ndarray, smin: np.ndarray,
               budgets: np.ndarray, gap: float, bound: float, k: int, deadline: float | None
               ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, int,
                          tuple[int, ...]]:
    """Every feasible network with reduced costs summing to at most ``gap`` and score at most
    ``bound``; the ``k`` best of them (or None), the most partial networks held, core sizes.
    Uncoupled blocks are merged smallest core first, coupled ones in chain order."""
    cores = [b.core(gap) for b in blocks]
    core = tuple(max(c) for c in cores)
    order = (list(range(len(blocks))) if coupled
             else sorted(range(len(blocks)), key=lambda i: core[i]))
    tol = EPS * np.maximum(np.abs(budgets), 1.0)
    slack = EPS * max(1.0, abs(bound))
    first = blocks[order[0]]
    idx = first.order[0][: cores[order[0]][0]]
    R, S, C = first.red[0][: len(idx)], first.scores[idx], first.costs[0, idx]
    choice, row = idx[:, None], first.links[idx]
    largest = len(R)
    for step, i in enumerate(order[1:], 1):
        rest = order[step + 1:]
        c_rest = cmin[rest].sum(axis=0) if rest else np.zeros_like(budgets)
        s_rest = float(smin[rest].sum()) if rest else 0.0
        blk = blocks[i]
        keep = (C + cmin[i] + c_rest <= budgets + tol).all(axis=1)
        keep &= S + smin[i] + s_rest <= bound + slack
        R, S, C, choice, row = R[keep], S[keep], C[keep], choice[keep], row[keep]
        if not coupled:
            row = np.zeros_like(row)
        parts = []
        for a in np.unique(row) if len(row) else ():
            sel = np.flatnonzero(row == a)
            ri, cand = blk.red[a][: cores[i][a]], blk.order[a][: cores[i][a]]
            counts = np.searchsorted(ri, gap - R[sel], side="right")
            total = int(counts.sum())
            if total > MAX_ROWS:  # too wide a gap to hold: treat as a pass not finished
                raise _Timeout
            largest = max(largest, total)
            p = np.repeat(sel, counts)
            q = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            j = cand[q]
            S2, C2 = S[p] + blk.scores[j], C[p] + blk.costs[a, j]
            ok = (C2 + c_rest <= budgets + tol).all(axis=1) & (S2 + s_rest <= bound + slack)
            parts.append((R[p[ok]] + ri[q[ok]], S2[ok], C2[ok],
                          np.concatenate([choice[p[ok]], j[ok, None]], axis=1),
                          blk.links[j[ok]]))
        if not parts:
            return None, largest, core
        R, S, C, choice, row = (np.concatenate(x) for x in zip(*parts, strict=True))
        if deadline is not None and time.monotonic() > deadline:
            raise _Timeout
    feasible = (budgets + tol >= C).all(axis=1)
    if not feasible.any():
        return None, largest, core
    S, C, choice = S[feasible], C[feasible], choice[feasible]
    out = np.empty_like(choice)
    out[:, order] = choice  # back to block order
    if len(S) > k:
        part = np.argpartition(S, k - 1)[:k]
        out, S, C = out[part], S[part], C[part]
    return (out, S, C), largest, core
