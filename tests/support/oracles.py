"""Independent oracles the tests check production code against."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def brute_force(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray],
                budgets: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every network's (choices, score, costs), feasible ones only: the selectors' oracle on
    tiny instances (every combination of one candidate per block)."""

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
