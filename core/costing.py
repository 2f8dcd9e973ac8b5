"""The costing step of the select stage: every cost model prices every candidate.

Contract. Between the rankings (the rank stage's artefacts, read once) and the selector:

- each cost model's :meth:`~dnax.CostModel.candidate_costs` gives, per block, one cost per
  candidate, shape ``(n,)``, or ``(rows, n)`` where several widths can enter the block (row
  ``r``: the previous block's chosen cell is ``prev.out_widths[r]`` wide); any other shape is a
  PluginError naming the model;
- :meth:`~dnax.CostModel.fixed_cost` gives the stem's, head's and unsearched stages' cost;
- the main process stores both in :data:`COSTS` (safetensors: ``block<i>.<metric>`` arrays,
  metadata ``fixed`` and ``cell_widths`` as JSON), which :class:`dnax.Run` reads back.

The selector then receives :attr:`Costed.rankings` (the rankings with ``costs`` filled in) and
:attr:`Costed.fixed`. ``dnax validate`` prices the space the same way, without scores, to check
budgets on static cost models before any training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from attrs import frozen

from .context import StageContext
from .errors import PluginError
from .rundir import RunDir
from .types import BlockRanking, BlockSpec

#: every candidate's cost per block and metric, written by the select stage
COSTS = "selection/costs.safetensors"


@frozen
class Costed:
    """What the costing step hands the selector."""

    #: per searched block, its ranking with every cost model's candidate costs added
    rankings: tuple[BlockRanking, ...]
    #: per metric, the cost of the network's parts outside the searched blocks
    fixed: dict[str, float]


def cost(ctx: StageContext, blocks: Sequence[BlockSpec],
         rankings: Sequence[BlockRanking]) -> Costed:
    """The costing step: price ``rankings`` with every configured cost model and store the
    costs (main process only)."""
    models = ctx.plugins.costs
    costed = Costed(tuple(cost_rankings(ctx, blocks, models, rankings)),
                    {c.metric: float(c.fixed_cost(ctx, blocks)) for c in models})
    if ctx.dist.is_main and models:
        save_costs(ctx.run_dir, costed)
    return costed


def save_costs(run_dir: RunDir, costed: Costed) -> None:
    import torch

    run_dir.save_tensors(COSTS, {
        f"block{r.block}.{m}": torch.as_tensor(np.asarray(v, dtype=np.float64))
        for r in costed.rankings for m, v in r.costs.items()}, kind="costs", metadata={
            "fixed": json.dumps(costed.fixed),
            "cell_widths": json.dumps({str(r.block): list(r.cell_widths)
                                       for r in costed.rankings})})


def load_costs(run_dir: RunDir) -> tuple[dict[str, Any], dict[str, float], dict[str, list[int]]]:
    """:data:`COSTS` as stored: the arrays, the fixed costs and the cell widths per block
    (empty where the select stage has not stored them)."""
    if not run_dir.exists(COSTS):
        return {}, {}, {}
    arrays, meta = run_dir.load_tensors(COSTS, kind="costs")
    return (arrays, json.loads(meta.get("fixed", "{}")),
            json.loads(meta.get("cell_widths", "{}")))


def cost_rankings(ctx: StageContext, blocks: Sequence[BlockSpec], models: Sequence[Any],
                  rankings: Sequence[BlockRanking] | None = None) -> list[BlockRanking]:
    """Per block, ``rankings`` (default: every candidate of the space, no scores) with each cost
    model's candidate costs added, as the select stage sees them."""
    space = ctx.plugins.space
    out: list[BlockRanking] = []
    for i, spec in enumerate(blocks):
        r = rankings[i] if rankings is not None else BlockRanking(
            spec.index, tuple(space.candidates(spec)), {}, {})
        widths = tuple(c.out_chs for c in space.cells(spec))
        rows = len(out[-1].out_widths) if out else 1
        costs = {c.metric: check_costs(c, spec, c.candidate_costs(ctx, spec, r.candidates),
                                       len(r.candidates), rows) for c in models}
        out.append(BlockRanking(r.block, r.candidates, r.scores, {**r.costs, **costs},
                                cell_widths=widths))
    return out


def check_costs(model: Any, spec: BlockSpec, costs: Any, n: int, rows: int) -> np.ndarray:
    """A cost model's costs of one block: (n,), or (rows, n) where several widths can enter it
    (see :class:`BlockRanking`); anything else is a PluginError naming the model."""
    arr = np.asarray(costs, dtype=np.float64)
    if arr.shape == (n,) or (rows > 1 and arr.shape == (rows, n)):
        return arr
    want = f"({n},)" + (f" or ({rows}, {n})" if rows > 1 else "")
    raise PluginError(f"$.costs: {model.metric}: {type(model).__name__}.candidate_costs gave "
                      f"block {spec.index} costs of shape {arr.shape}, expected {want}")


def cheapest(rankings: Sequence[BlockRanking], metric: str, fixed: float) -> float:
    """The least whole-network cost in ``metric``: ``fixed`` plus one candidate per block, where
    a block's 2-D costs take the row of the width the previous block's candidate passes on
    (dynamic programming along the chain of blocks, from the last back)."""
    future = np.zeros(1)  # per row of the next block: its cheapest completion
    for k in range(len(rankings) - 1, -1, -1):
        r = rankings[k]
        a = np.asarray(r.costs[metric], dtype=np.float64)
        a = a[None, :] if a.ndim == 1 else a
        if len(future) > 1:  # the next block's row is the width this candidate passes on
            row = {w: j for j, w in enumerate(r.out_widths)}
            nxt = np.array([row[r.out_width(i)] for i in range(len(r.candidates))])
        else:
            nxt = np.zeros(len(r.candidates), dtype=np.int64)
        future = (a + future[nxt][None, :]).min(axis=1)
    return float(fixed + future[0])
