"""A cost model: depth, the number of layers of the network."""

import numpy as np
from attrs import frozen

import dnax
from dnax.plugins.toolkit.builder import decode


@frozen
class DepthConfig:
    """No settings: an empty table."""


class Depth(dnax.CostModel):
    """Layers: one per arch string of a candidate, plus the layers of the unsearched stages
    (stem conv and head not counted)."""

    Config = DepthConfig
    metric = "depth"

    def candidate_costs(self, ctx, block, candidates):
        return np.array([len(c.arch) for c in candidates], dtype=np.float64)

    def fixed_cost(self, ctx, blocks):
        space = ctx.plugins.space
        arch = space.arch_def(blocks, [space.candidates(b)[0] for b in blocks])
        fixed = arch[: len(arch) - len(blocks)]  # the stages before the searched blocks
        return float(sum(len(stage) for stage in decode(fixed)))


@dnax.hookimpl
def dnax_register_costs(register):
    register("depth", Depth)
