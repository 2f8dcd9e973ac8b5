"""Selector ``exact``: the best network under one or more budgets, solved exactly."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from attrs import field, frozen

import dnax

from .coupling import cost_tables, network_costs
from .pareto import Network, solve

Normalise = Literal["none", "minmax", "zscore", "rank"]


def _budgets(_inst: Any, _attr: Any, value: dict[str, float]) -> None:
    for metric, budget in value.items():
        if not budget > 0:
            raise ValueError(f"budget for '{metric}' must be > 0, got {budget}")


@frozen
class ExactConfig:
    """Lowest summed block score under budgets, by merging per-block Pareto fronts."""

    key: str = field(default="nmae", metadata={
        "help": "score the rankings store that is minimised (e.g. nmae, nmse, mse)"})
    budgets: dict[str, float] = field(factory=dict, validator=_budgets, metadata={
        "help": "whole-network limit per cost metric, e.g. {params = 5.3e6, flops = 8e8}"})
    top_k: int = field(default=5, validator=dnax.positive, metadata={
        "help": "best networks stored in selection/top.json"})
    normalise: Normalise = field(default="none", metadata={
        "help": "per-block rescaling of scores before summing: none, minmax, zscore, rank"})
    time_limit: float = field(default=60.0, validator=dnax.positive, metadata={
        "help": "seconds of search (three or more budgets) before the best network found so "
                "far is returned with its proven optimality gap"})


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """One block's scores rescaled (non-finite entries stay NaN and are never chosen)."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    out = np.full(s.shape, np.nan)
    v = s[ok]
    if how == "none" or v.size == 0:
        out[ok] = v
    elif how == "minmax":
        span = v.max() - v.min()
        out[ok] = (v - v.min()) / span if span > 0 else 0.0
    elif how == "zscore":
        std = v.std()
        out[ok] = (v - v.mean()) / std if std > 0 else 0.0
    elif how == "rank":  # average rank of ties, scaled to [0, 1]
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        first = np.cumsum(counts) - counts
        ranks = (first + (counts - 1) / 2.0)[inv]
        out[ok] = ranks / (v.size - 1) if v.size > 1 else 0.0
    else:
        raise dnax.ConfigError(f"$.selector.normalise: unknown normalisation {how!r}")
    return out


class Exact(dnax.Selector):
    """The network with the lowest summed block score under every budget at once, exactly.

    A multiple-choice knapsack. With one or two budgets, per-block Pareto fronts of (score,
    costs) are merged: the top-k networks and the whole Pareto front of the feasible networks
    (``selection/top.json``, ``selection/front.json``). With three or more, a Lagrangian bound
    and reduced-cost core enumeration (:mod:`dnax.plugins.selectors.knapsack`) give the top-k
    exactly, within ``time_limit``; past it, the best found and its proven gap.

    ``normalise`` defaults to ``none``: the default key ``nmae`` (mean |student - teacher| over
    the teacher's std) is already normalised per block by the teacher's statistics, the
    normalisation DNA sums over; ``minmax``/``zscore``/``rank`` rescale each block's scores
    further (useful for raw ``mse``), at the price of stretching blocks whose candidates barely
    differ.
    """

    Config = ExactConfig

    @classmethod
    def check(cls, config: ExactConfig, pipeline: dnax.PipelineConfig, registry: Any
              ) -> list[str]:
        """Every budget must name the metric of one of the pipeline's [[costs]] models."""
        metrics = {registry.get("costs", sec.plugin).cls.metric for sec in pipeline.costs}
        return [f"budgets.{m}: no [[costs]] model measures '{m}' (configured: "
                f"{', '.join(sorted(metrics)) or 'none'})"
                for m in config.budgets if m not in metrics]

    def select(self, ctx: dnax.StageContext, rankings: Sequence[dnax.BlockRanking],
               fixed_costs: Mapping[str, float]) -> dnax.Selection:
        cfg = self.config
        metrics = list(cfg.budgets)
        for m in metrics:
            if m not in fixed_costs:
                raise dnax.ConfigError(
                    f"$.selector.budgets.{m}: no [[costs]] model measures '{m}' (configured: "
                    f"{', '.join(sorted(fixed_costs)) or 'none'})")
        scores = []
        for r in rankings:
            if cfg.key not in r.scores:
                raise dnax.ConfigError(
                    f"$.selector.key: block {r.block}'s ranking has no score {cfg.key!r} "
                    f"(it has: {', '.join(sorted(r.scores))})")
            scores.append(normalise(r.scores[cfg.key], cfg.normalise))
        table, links = cost_tables(rankings, metrics)
        fixed = np.array([fixed_costs[m] for m in metrics], dtype=np.float64)
        budgets = np.array([cfg.budgets[m] for m in metrics], dtype=np.float64) - fixed
        skipped = sum(int((~np.isfinite(s)).sum()) for s in scores)
        if skipped:
            ctx.log(f"exact: {skipped} candidates with a non-finite {cfg.key} are never chosen")

        passes = [0]

        def progress(message: str, lower_bound: float) -> None:
            passes[0] += 1
            ctx.progress("select", passes[0], None, lower_bound=lower_bound)
            ctx.log(f"exact: {message}, lower bound {lower_bound:.6g}")

        t0 = time.perf_counter()
        sol = solve(scores, table, budgets, top_k=cfg.top_k, names=metrics, fixed=fixed,
                    time_limit=cfg.time_limit, progress=progress, links=links)
        seconds = time.perf_counter() - t0
        if not sol.optimal:
            ctx.log(f"exact: time limit of {cfg.time_limit:g} s reached: the best network found "
                    f"is within {100 * sol.gap:.3g} % of the optimum (proven lower bound "
                    f"{sol.lower_bound:.6g}); raise $.selector.time_limit for the exact answer")

        def entry(net: Network) -> dict[str, Any]:
            return {"candidates": list(net.choice), "score": net.score,
                    "costs": network_costs(rankings, fixed_costs, net.choice)}

        best = sol.top[0]
        if ctx.dist.is_main:
            meta = {"key": cfg.key, "normalise": cfg.normalise, "budgets": dict(cfg.budgets),
                    "fixed": dict(fixed_costs), "optimal": sol.optimal, "gap": sol.gap,
                    "method": sol.method}
            ctx.run_dir.write_json("selection/top.json", {
                **meta, "networks": [entry(n) for n in sol.top]}, kind="top-k")
            ctx.run_dir.write_json("selection/front.json", {
                **meta, "metrics": metrics,
                "candidates": sol.front_choices.tolist(),
                "scores": sol.front_scores.tolist(),
                "costs": (sol.front_costs + fixed).tolist(),
                "complete": sol.method == "pareto",
            }, kind="pareto-front")
        limits = ", ".join(f"{m} <= {cfg.budgets[m]:.4g}" for m in metrics) or "no budget"
        ctx.log(f"exact: best of {float(np.prod([len(r.candidates) for r in rankings])):.3g} "
                f"networks under {limits}: {cfg.key} {best.score:.5g}; front of "
                f"{len(sol.front_scores)} networks; {seconds * 1e3:.1f} ms")
        ctx.progress("select", 1, 1, score=best.score)
        return self.selection(ctx, rankings, best.choice, best.score,
                              network_costs(rankings, fixed_costs, best.choice), cfg.budgets,
                              optimal=sol.optimal, gap=sol.gap)


@dnax.hookimpl
def dnax_register_selectors(register):
    register("exact", Exact)
