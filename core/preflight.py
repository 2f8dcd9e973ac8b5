"""Every check a pipeline can fail without training, run before anything touches a run folder.

``dnax validate`` runs them, and ``dnax run`` runs them before it writes a byte. Loading the
config already checked each table, the plugins' own cross-table ``check`` (timm model names, arch
strings, data folders' class sets, ...). Here, with the plugins built:

- the teacher's blocks, read off the model (no weights), against the space's blocks;
- each budget on a metric whose cost model can cost candidates without training
  (:attr:`~dnax.CostModel.static`): the cheapest network of the space must fit it.
"""

from __future__ import annotations

from typing import Any

from .config import PipelineConfig
from .context import Plugins, QuietHooks, StageContext
from .errors import ConfigError
from .rundir import RunDir
from .types import Plan


def check_pipeline(config: PipelineConfig, plugins: Plugins, run_dir: Any = None) -> Plan:
    """The search plan, once every check that needs no training has passed (else the
    ConfigError / PluginError of the first that failed)."""
    from .costing import cheapest, cost_rankings
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
