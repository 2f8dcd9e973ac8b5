"""Costs of networks whose blocks depend on the width the previous block passes on.

A block's ``costs[metric]`` is 1-D (one entry per candidate) or 2-D (one row per width that can
enter it, see ``dnax.BlockRanking``). These helpers turn a run's rankings into the solvers'
tables and add up the costs of a chosen network, row by row along the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import dnax


def cost_tables(rankings: Sequence[dnax.BlockRanking], metrics: Sequence[str]
                ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per block the costs (rows, candidates, metrics), and per block but the last the row of
    the next block each candidate selects (None when no block's costs depend on a width)."""
    cubes = []
    for i, r in enumerate(rankings):
        arrays = [np.asarray(r.costs[m], dtype=np.float64) for m in metrics]
        rows = max((a.shape[0] for a in arrays if a.ndim == 2), default=1)
        if rows > 1 and (i == 0 or rows != len(rankings[i - 1].out_widths)):
            raise dnax.ArtifactError(f"block {r.block}: costs of {rows} rows, but "
                                     f"{'no block' if i == 0 else 'the previous block'} passes "
                                     "on that many widths")
        n = len(r.candidates)
        cubes.append(np.stack([np.broadcast_to(a, (rows, n)) for a in arrays], axis=-1)
                     if arrays else np.zeros((1, n, 0)))
    if all(c.shape[0] == 1 for c in cubes):
        return [c[0] for c in cubes], None
    links = []
    for r, nxt in zip(rankings[:-1], cubes[1:], strict=True):
        if nxt.shape[0] == 1:
            links.append(np.zeros(len(r.candidates), dtype=np.int64))
            continue
        row = {w: k for k, w in enumerate(r.out_widths)}
        widths = np.array(r.cell_widths)[[c.cell for c in r.candidates]]
        links.append(np.array([row[w] for w in widths], dtype=np.int64))
    return cubes, links


def network_costs(rankings: Sequence[dnax.BlockRanking], fixed: Mapping[str, float],
                  choice: Sequence[int]) -> dict[str, float]:
    """Every metric's whole-network cost of ``choice``: the fixed part plus, per block, the
    chosen candidate's cost in the row the previous block's chosen width selects."""
    out = {}
    for m, f in fixed.items():
        total = float(f)
        for k, (r, i) in enumerate(zip(rankings, choice, strict=True)):
            a = np.asarray(r.costs[m], dtype=np.float64)
            if a.ndim == 1:
                total += float(a[i])
            else:
                prev = rankings[k - 1]
                total += float(a[prev.out_widths.index(prev.out_width(choice[k - 1])), i])
        out[m] = total
    return out
