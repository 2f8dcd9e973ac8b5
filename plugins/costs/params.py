"""Cost model ``params``: the exact parameter count of each candidate and of the fixed parts."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax

from .common import LayerSig, LayerwiseCost, out_size


@frozen
class ParamsConfig:
    """Counts parameters (weights, biases, BatchNorm affine) of the network timm builds."""


class Params(LayerwiseCost):
    """Parameter count: each candidate's layers as timm builds them (adapters excluded), plus
    stem, unsearched stages and head (classifier sized to the data's classes).

    ``fixed_cost + sum(candidate costs)`` equals ``sum(p.numel())`` of the final network exactly.
    """

    Config = ParamsConfig
    metric = "params"

    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        return float(sum(p.numel() for p in layer.parameters())), out_size(sig)

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        searched = tuple(f"blocks.{i}." for i in range(n_fixed, len(model.blocks)))
        return float(sum(p.numel() for name, p in model.named_parameters()
                         if not name.startswith(searched)))


@dnax.hookimpl
def dnax_register_costs(register):
    register("params", Params)
