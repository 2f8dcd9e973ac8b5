"""Every check a pipeline can fail without training, run before anything touches a run folder.

``dnax validate`` runs them, and ``dnax run`` runs them before it writes a byte. Loading the
config already checked each table, the plugins' own cross-table ``check`` (timm model names, arch
strings, data folders' class sets, ...). Here, with the plugins built:

- the teacher's blocks, read off the model (no weights), against the space's blocks;
- each budget on a metric whose cost model can cost candidates without training
  (:attr:`~dnax.CostModel.static`): the cheapest network of the space must fit it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import PipelineConfig
from .context import Plugins, QuietHooks, StageContext
from .errors import ConfigError, PluginError
from .rundir import RunDir
from .types import BlockRanking, BlockSpec, Plan


def check_pipeline(config: PipelineConfig, plugins: Plugins, run_dir: Any = None) -> Plan:
    """The search plan, once every check that needs no training has passed (else the
    ConfigError / PluginError of the first that failed)."""
    from .runner import build_plan

    plan = build_plan(config, plugins)
    budgets = getattr(getattr(plugins.selector, "config", None), "budgets", None) or {}
    static = [c for c in plugins.costs if c.static and c.metric in budgets]
    if static:
        ctx = StageContext("select", config, plugins, RunDir(run_dir or "."), QuietHooks())
        blocks = tuple(b.spec for b in plan.blocks)
        rankings = cost_rankings(ctx, blocks, static)
        problems = []
        for model in static:
            cost = cheapest(rankings, model.metric, model.fixed_cost(ctx, blocks))
            if cost > budgets[model.metric]:
                problems.append(f"$.selector.budgets.{model.metric}: {budgets[model.metric]:g} "
                                f"is below the cheapest network of the space "
                                f"({cost:.6g} {model.metric}); no network can meet it")
        if problems:
            raise ConfigError(problems)
    return plan


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
