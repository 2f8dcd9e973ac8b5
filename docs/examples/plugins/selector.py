"""A selector: the lowest summed score under one budget, by merging the blocks' Pareto fronts
of (cost, score) one block at a time (costs are never negative, so a partial network over the
budget can be dropped)."""

import math

from attrs import field, frozen

import dnax


@frozen
class ParetoMergeConfig:
    key: str = field(default="mse", metadata={"help": "block score summed and minimised"})
    metric: str = field(default="depth", metadata={"help": "cost metric the budget limits"})
    budget: float | None = field(default=None, validator=dnax.positive,
                                 metadata={"help": "most the whole network may cost"})


class ParetoMerge(dnax.Selector):
    """Exact best network under a budget on one [[costs]] metric."""

    Config = ParetoMergeConfig

    @classmethod
    def check(cls, config, pipeline, registry):
        measured = {registry.get("costs", c.plugin).cls.metric for c in pipeline.costs}
        return [] if config.metric in measured else [
            f"metric: no [[costs]] model measures {config.metric!r}"]

    def select(self, ctx, rankings, fixed_costs):
        c, limit = self.config, self.config.budget or math.inf
        front = [(fixed_costs[c.metric], 0.0, ())]  # (cost, score, choice) of partial networks
        for r in rankings:
            merged = sorted((cost + r.costs[c.metric][i], score + r.scores[c.key][i], (*ch, i))
                            for cost, score, ch in front for i in range(len(r.candidates)))
            front = []
            for net in merged:  # cheapest first: keep a network only if it beats all cheaper
                # ones (NaN scores never do)
                if net[0] <= limit and net[1] < (front[-1][1] if front else math.inf):
                    front.append(net)
        if not front:
            raise dnax.NoFeasibleNetworkError(
                f"$.selector.budget: no network has {c.metric} <= {limit:g}")
        score, choice = front[-1][1:]
        ctx.log(f"best of {len(front)} networks on the front: {c.key} {score:.4g}")
        costs = {m: fixed + sum(float(r.costs[m][i]) for r, i in zip(rankings, choice, strict=True))
                 for m, fixed in fixed_costs.items()}
        return self.selection(ctx, rankings, choice, float(score), costs,
                              {} if c.budget is None else {c.metric: c.budget})


@dnax.hookimpl
def dnax_register_selectors(register):
    register("pareto-merge", ParetoMerge)
