"""A conv search space: per block one cell of ``depth`` layers, each layer a timm ConvBnAct
('cn' arch string) choosing its kernel size."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence

import attrs
import torch
from attrs import field, frozen
from timm.models._efficientnet_builder import (
    EfficientNetBuilder,
    decode_arch_def,
    round_channels,
)
from torch import nn

import dnax


@frozen
class ConvSpaceConfig:
    """Layers of plain convolutions choosing their kernel."""

    depth: int = field(default=2, validator=dnax.positive, metadata={"help": "layers per cell"})
    kernels: tuple[int, ...] = field(default=(3, 5), validator=dnax.positive,
                                     metadata={"help": "kernel sizes each layer chooses from"})
    stem_size: int = field(default=16, validator=dnax.positive,
                           metadata={"help": "stem width of the final network"})
    num_features: int = field(default=128, validator=dnax.positive,
                              metadata={"help": "head width of the final network"})


def build_layer(arch: str, in_chs: int) -> nn.Module:
    """The timm block an arch string describes (exactly what the final network contains)."""
    builder = EfficientNetBuilder(act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d)
    stages = builder(in_chs, decode_arch_def([[arch]]))
    return stages[0][0]


def _adapter(cin: int, cout: int) -> nn.Module:
    if cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class ConvCell(nn.Module):
    def __init__(self, spec: dnax.BlockSpec, archs: Sequence[Sequence[str]], width: int):
        super().__init__()
        self.enter = _adapter(spec.in_chs, width)
        self.layers = nn.ModuleList(nn.ModuleList(build_layer(a, width) for a in layer)
                                    for layer in archs)
        self.exit = _adapter(width, spec.out_chs)


class ConvSupernet(nn.Module):
    def __init__(self, cells: Sequence[ConvCell]):
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor, cell: int, ops: Sequence[int]) -> torch.Tensor:
        c = self.cells[cell]
        x = c.enter(x)
        for layer, op in zip(c.layers, ops, strict=True):
            x = layer[op](x)
        return c.exit(x)


class ConvSpace(dnax.SearchSpace):
    """Plain conv layers choosing their kernel (example plugin)."""

    Config = ConvSpaceConfig

    @staticmethod
    def width(spec: dnax.BlockSpec) -> int:
        """The cell's channels: the teacher's, as timm rounds them (to a multiple of 8); the
        supernet's adapters bridge any difference to the teacher's features."""
        return round_channels(spec.out_chs)

    def _archs(self, spec: dnax.BlockSpec) -> list[list[str]]:
        return [[f"cn_r1_k{k}_s{spec.stride if j == 0 else 1}_c{self.width(spec)}"
                 for k in self.config.kernels] for j in range(self.config.depth)]

    def cells(self, block: dnax.BlockSpec) -> tuple[dnax.CellSpec, ...]:
        ops = tuple(f"k{k}" for k in self.config.kernels)
        return (dnax.CellSpec(0, self.config.depth, self.width(block), ops),)

    def candidates(self, block: dnax.BlockSpec) -> list[dnax.Candidate]:
        archs = self._archs(block)
        choices = itertools.product(range(len(self.config.kernels)), repeat=self.config.depth)
        return [dnax.Candidate(block.index, i, 0, ops,
                               tuple(archs[j][o] for j, o in enumerate(ops)))
                for i, ops in enumerate(choices)]

    def build_supernet(self, block: dnax.BlockSpec) -> nn.Module:
        return ConvSupernet([ConvCell(block, self._archs(block), self.width(block))])

    def arch_def(self, blocks: Sequence[dnax.BlockSpec], chosen: Sequence[dnax.Candidate]
                 ) -> list[list[str]]:
        return [[f"cn_r1_k3_s1_c{blocks[0].in_chs}"], *[list(c.arch) for c in chosen]]

    def model_kwargs(self) -> dict:
        return {"stem_size": self.config.stem_size, "num_features": self.config.num_features,
                "act_layer": "relu"}

    def fingerprint(self) -> str:
        body = json.dumps(attrs.asdict(self.config), sort_keys=True)
        return hashlib.sha256(f"convs:{body}".encode()).hexdigest()[:16]
