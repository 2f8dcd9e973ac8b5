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
    the LP's optimum; ``(None, inf)`` when even the LP relaxation is infeasible."""
    import scipy.sparse as sp
    from scipy.optimize import linprog

    m = budgets.size
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


def solve_core(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], budgets: np.ndarray,
               *, top_k: int = 1, time_limit: float | None = None,
               progress: Callable[[str, float], None] | None = None) -> CoreResult:
    """The ``top_k`` best networks within ``budgets`` (see the module docstring).

    ``scores[i]`` (candidates,) and ``costs[i]`` (candidates, budgets) must be finite.
    ``progress(message, lower_bound)`` is called after every pass.
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    budgets = np.asarray(budgets, dtype=np.float64)
    lam, _ = lagrangian(scores, costs, budgets)
    if lam is None:
        raise NoFeasibleNetworkError("no network fits all budgets at once (even the LP "
                                     "relaxation is infeasible)")
    w = [s + c @ lam for s, c in zip(scores, costs, strict=True)]
    wmin = np.array([x.min() for x in w])
    lb = float(wmin.sum() - lam @ budgets)
    r = [x - x0 for x, x0 in zip(w, wmin, strict=True)]
    order_r = [np.argsort(x, kind="stable") for x in r]
    blocks = [(r[i][o], scores[i][o], costs[i][o], o) for i, o in enumerate(order_r)]
    cmin = np.array([c.min(axis=0) for c in costs])
    smin = np.array([s.min() for s in scores])
    scale = max(1.0, abs(lb))
    spread = float(np.median([np.median(x) for x in r]))
    gap = max(EPS * scale, 1e-3 * spread)
    best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    proven, passes, largest, core = lb, 0, 0, ()
    full = float(sum(x[-1] for x, *_ in blocks))  # every network lies within this gap
    while True:
        if passes and deadline is not None and time.monotonic() > deadline:
            break
        bound = np.inf if best is None or len(best[1]) < top_k else float(best[1][-1])
        try:  # the first pass (the smallest gap) always runs to its end
            found, rows, core = _enumerate(blocks, cmin, smin, budgets, gap, bound, top_k,
                                           deadline if passes else None)
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


def _enumerate(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
               cmin: np.ndarray, smin: np.ndarray, budgets: np.ndarray, gap: float,
               bound: float, k: int, deadline: float | None
               ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, int,
                          tuple[int, ...]]:
    """Every feasible network with reduced costs summing to at most ``gap`` and score at most
    ``bound``; the ``k`` best of them (or None), the most partial networks held, core sizes."""
    core = tuple(int(np.searchsorted(r, gap, side="right")) for r, *_ in blocks)
    order = sorted(range(len(blocks)), key=lambda i: core[i])
    tol = EPS * np.maximum(np.abs(budgets), 1.0)
    first = order[0]
    r0, s0, c0, idx0 = (x[: core[first]] for x in blocks[first])
    R, S, C = r0, s0, c0
    choice = idx0[:, None]
    largest = len(R)
    for step, i in enumerate(order[1:], 1):
        rest = order[step + 1:]
        c_rest = cmin[rest].sum(axis=0) if rest else np.zeros_like(budgets)
        s_rest = float(smin[rest].sum()) if rest else 0.0
        ri, si, ci, idxi = (x[: core[i]] for x in blocks[i])
        keep = (C + cmin[i] + c_rest <= budgets + tol).all(axis=1)
        keep &= S + smin[i] + s_rest <= bound + EPS * max(1.0, abs(bound))
        R, S, C, choice = R[keep], S[keep], C[keep], choice[keep]
        counts = np.searchsorted(ri, gap - R, side="right")
        total = int(counts.sum())
        if total > MAX_ROWS:  # too wide a gap to hold: treat as a pass not finished
            raise _Timeout
        a = np.repeat(np.arange(len(R)), counts)
        j = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        R2, S2, C2 = R[a] + ri[j], S[a] + si[j], C[a] + ci[j]
        ok = (C2 + c_rest <= budgets + tol).all(axis=1)
        ok &= S2 + s_rest <= bound + EPS * max(1.0, abs(bound))
        R, S, C = R2[ok], S2[ok], C2[ok]
        choice = np.concatenate([choice[a[ok]], idxi[j[ok], None]], axis=1)
        largest = max(largest, total)
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
