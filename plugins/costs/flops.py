"""Cost model ``flops``: FLOPs of one image, counted by ``torch.utils.flop_counter``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from attrs import frozen
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax
from dnax.plugins.toolkit.training import count_flops

from .common import LayerSig, LayerwiseCost, head_part, searched_stages, stem_part


@frozen
class FlopsConfig:
    """FLOPs of one image at the pipeline's resolution (2 per multiply-add)."""


class Flops(LayerwiseCost):
    """FLOPs per image with torch.utils.flop_counter's convention: 2 FLOPs per multiply-add
    (so about twice the "MACs" figures papers quote). Each candidate's layers are counted at
    the block's input size (``BlockSpec.in_size``), adapters excluded; stem, unsearched stages
    and head are counted on the whole network at the pipeline's resolution.
    """

    Config = FlopsConfig
    metric = "flops"

    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        self._check_stride(ctx)
        flops, y = count_flops(layer, torch.zeros(1, sig.in_chs, sig.in_size, sig.in_size))
        return float(flops), int(y.shape[-1])

    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        self._check_stride(ctx)
        res = ctx.resolution
        x = torch.zeros(1, model.in_chans, res, res)
        total, x = count_flops(stem_part(model, n_fixed), x)
        x = searched_stages(model, n_fixed, blocks, x, res)
        return float(total + count_flops(head_part(model), x)[0])

    @staticmethod
    def _check_stride(ctx: dnax.StageContext) -> None:
        if ctx.plugins.space.model_kwargs().get("output_stride", 32) != 32:
            raise dnax.ConfigError("$.costs: flops: model_kwargs output_stride other than 32 "
                                   "(dilated stages) is not supported")


@dnax.hookimpl
def dnax_register_costs(register):
    register("flops", Flops)
