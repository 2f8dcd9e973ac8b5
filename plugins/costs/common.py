"""The base shared by the layer-wise cost models.

A candidate's cost is the sum of its layers' costs; each layer is built once per *signature*
(arch string, input width, input size, first-in-stage) by :mod:`dnax.plugins.toolkit.builder`,
the builder of every network dnax trains and retrains, so the layer is the one the final
network holds.

Additivity: a block's first layer takes the previous block's output width. Where every cell
of the previous block has one width, a candidate has one cost; where they differ (the paper's
preset, blocks 0, 3 and 4), the candidate's cost depends on the width it receives and
:meth:`LayerwiseCost.candidate_costs` gives one row per width (see ``dnax.BlockRanking``); the
head's dependence on the last block's width goes into that block's candidates. Costs then add
up exactly along any network: fixed part plus, per block, the row its predecessor's width picks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from attrs import frozen
from timm.models.efficientnet import EfficientNet
from torch import nn

import dnax
from dnax.plugins.toolkit.builder import (
    build_layer,
    build_network,
    decode,
    stages_out_width,
)


@frozen
class LayerSig:
    """What decides one layer's cost; ``key`` names it in lookup tables (e.g. latency)."""

    arch: str
    in_chs: int
    in_size: int
    first: bool

    @property
    def key(self) -> str:
        return f"{self.arch}@{self.in_chs}x{self.in_size}{'' if self.first else ':inner'}"


def out_size(sig: LayerSig) -> int:
    """The output size of a layer as timm's padding gives it (``ceil(size / stride)``)."""
    stride = decode([[sig.arch]])[0][0]["stride"] if sig.first else 1
    return -(-sig.in_size // stride)


def searched_blocks(ctx: dnax.StageContext) -> tuple[dnax.BlockSpec, ...]:
    teacher = ctx.results.get("teacher")
    return tuple(teacher.blocks) if teacher is not None else ctx.plugins.teacher.blocks(
        ctx.resolution)


class LayerwiseCost(dnax.CostModel):
    """Base of exact additive cost models: per candidate, the sum of its layers' costs.

    Subclasses give :meth:`layer_cost` (one layer) and :meth:`fixed_part` (the network minus its
    searched stages). A table-driven model (latency) can override :meth:`layer_cost` to look up
    ``sig.key`` instead of building the layer.
    """

    static = True  # layers built from arch strings, or looked up in a table: no training

    def __init__(self, config: Any):
        super().__init__(config)
        self._layers: dict[tuple[str, LayerSig], tuple[float, int, int]] = {}
        self._candidates: dict[tuple[str, int], Sequence[dnax.Candidate]] = {}

    @abstractmethod
    def layer_cost(self, ctx: dnax.StageContext, layer: nn.Module, sig: LayerSig
                   ) -> tuple[float, int]:
        """The cost of ``layer`` (built from ``sig``) and its output size in pixels."""

    @abstractmethod
    def fixed_part(self, ctx: dnax.StageContext, model: EfficientNet, n_fixed: int,
                   blocks: Sequence[dnax.BlockSpec]) -> float:
        """The cost of ``model`` without ``model.blocks[n_fixed:]`` (stem, fixed stages, head)."""

    # --- the contract -------------------------------------------------------------------

    def candidate_costs(self, ctx: dnax.StageContext, block: dnax.BlockSpec,
                        candidates: Sequence[dnax.Candidate]) -> np.ndarray:
        """Each candidate's cost, (candidates,); or (widths, candidates) where the previous
        block's cells differ in width (row ``r``: the cost after a
        cell of width ``in_widths(...)[r]``).
        In the last block, what the head costs more (or less) after a candidate's width than
        after the first cell's is part of the candidate's cost."""
        kwargs = ctx.plugins.space.model_kwargs()
        blocks = searched_blocks(ctx)
        widths = self.in_widths(ctx, blocks, block.index)
        out = np.empty((len(widths), len(candidates)), dtype=np.float64)
        for r, in_chs in enumerate(widths):
            for n, cand in enumerate(candidates):
                chs, size, total = in_chs, block.in_size, 0.0
                for j, arch in enumerate(cand.arch):
                    cost, chs, size = self._layer(ctx, LayerSig(arch, chs, size, j == 0), kwargs)
                    total += cost
                out[r, n] = total
        if blocks and block.index == blocks[-1].index:
            out += self._head_deltas(ctx, blocks, candidates)
        return out[0] if len(widths) == 1 else out

    def fixed_cost(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec]) -> float:
        """Stem, unsearched stages and head of the network of each block's first candidate."""
        model, n_fixed = self.reference_network(ctx, tuple(blocks))
        return float(self.fixed_part(ctx, model, n_fixed, tuple(blocks)))

    # --- helpers ------------------------------------------------------------------------

    def candidates(self, ctx: dnax.StageContext, block: dnax.BlockSpec
                   ) -> Sequence[dnax.Candidate]:
        key = (ctx.plugins.space.fingerprint(), block.index)
        if key not in self._candidates:
            self._candidates[key] = ctx.plugins.space.candidates(block)
        return self._candidates[key]

    def in_widths(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec], index: int
                  ) -> tuple[int, ...]:
        """The widths that can enter searched block ``index`` in the final network, ascending:
        the previous block's cell widths, or the width of the stem and unsearched stages."""
        if index > 0:
            return tuple(sorted({c.out_chs for c in ctx.plugins.space.cells(blocks[index - 1])}))
        chosen = [self.candidates(ctx, b)[0] for b in blocks]
        arch = ctx.plugins.space.arch_def(blocks, chosen)
        return (stages_out_width(arch[: len(arch) - len(blocks)],
                                 ctx.plugins.space.model_kwargs()),)

    def reference_network(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                          last: dnax.Candidate | None = None) -> tuple[EfficientNet, int]:
        """The whole network with each block's first candidate (the last block's: ``last``
        when given), and its number of fixed stages."""
        space = ctx.plugins.space
        chosen = [self.candidates(ctx, b)[0] for b in blocks]
        if last is not None:
            chosen[-1] = last
        arch = space.arch_def(blocks, chosen)
        model = build_network(arch, ctx.plugins.data.num_classes, space.model_kwargs())
        return model.eval(), len(arch) - len(blocks)

    def _head_deltas(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                     candidates: Sequence[dnax.Candidate]) -> np.ndarray:
        """Per candidate of the last block: the fixed part's cost after its cell's width minus
        the fixed part's cost after the first cell's (0 where all cells share one width)."""
        cells = ctx.plugins.space.cells(blocks[-1])
        if len({c.out_chs for c in cells}) == 1:
            return np.zeros(len(candidates))
        firsts: dict[int, dnax.Candidate] = {}
        for cand in self.candidates(ctx, blocks[-1]):
            firsts.setdefault(cand.cell, cand)
        base = self.fixed_cost(ctx, blocks)
        delta: dict[int, float] = {}
        for c in cells:
            if c.out_chs not in delta:
                model, n_fixed = self.reference_network(ctx, blocks, firsts[c.index])
                delta[c.out_chs] = float(self.fixed_part(ctx, model, n_fixed, blocks)) - base
        width = {c.index: c.out_chs for c in cells}
        return np.array([delta[width[cand.cell]] for cand in candidates])

    def _layer(self, ctx: dnax.StageContext, sig: LayerSig, kwargs: Mapping[str, Any]
               ) -> tuple[float, int, int]:
        key = (ctx.plugins.space.fingerprint(), sig)
        if key not in self._layers:
            layer, out_chs = build_layer(sig.arch, sig.in_chs, kwargs, first=sig.first)
            layer.eval()
            with torch.no_grad():
                cost, out_size = self.layer_cost(ctx, layer, sig)
            self._layers[key] = (float(cost), out_chs, int(out_size))
        return self._layers[key]


def stem_part(model: EfficientNet, n_fixed: int) -> Any:
    """The network up to its first searched block: stem conv and the unsearched stages."""
    return lambda x: model.blocks[:n_fixed](model.bn1(model.conv_stem(x)))


def head_part(model: EfficientNet) -> Any:
    """The network after its last searched block: head conv, pooling, classifier."""
    return lambda x: model.forward_head(model.bn2(model.conv_head(x)))


def searched_stages(model: EfficientNet, n_fixed: int, blocks: Sequence[dnax.BlockSpec],
                    x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Run ``x`` (the stem's output) through the searched stages, checking that every block
    sees the spatial size the teacher's block does; the input of the head."""
    with torch.inference_mode():
        for spec, stage in zip(blocks, model.blocks[n_fixed:], strict=True):
            if x.shape[-1] != spec.in_size:
                raise dnax.ConfigError(
                    f"$.space: block {spec.index} sees {x.shape[-1]} px in the network built at "
                    f"resolution {resolution}, but the teacher's block takes {spec.in_size} px; "
                    "the space's stem must reduce as the teacher's does")
            x = stage(x)
    if x.shape[-1] != blocks[-1].out_size:
        raise dnax.ConfigError(
            f"$.space: the head sees {x.shape[-1]} px in the network built at resolution "
            f"{resolution}, but the teacher's last block gives {blocks[-1].out_size} px")
    return x
