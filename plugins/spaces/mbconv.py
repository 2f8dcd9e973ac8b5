"""The multi-cell MBConv search space of DNA: per block several cells (depth x width), per layer
one op out of kernel x expansion ratio. Every op is the timm block its arch string decodes to."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any, Literal, overload

import attrs
from attrs import field, frozen
from torch import nn

import dnax
from dnax.plugins.toolkit.builder import build_layer, decode, round_width
from dnax.plugins.toolkit.supernet import BlockSupernet, Cell, adapter

from .presets import PRESETS

#: timm's arch-string suffix of each activation (swish is the network default: no suffix)
ACT_SUFFIX = {"swish": "", "relu": "_nre", "relu6": "_nr6", "hard_swish": "_nhs", "mish": "_nmi"}
_VERSION = 2  # 2: cells of one block may differ in width


def _odd(_inst: Any, _attr: Any, value: tuple[int, ...]) -> None:
    if not value:
        raise ValueError("must not be empty")
    for k in value:
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel sizes must be odd and positive, got {k}")


def _non_empty(_inst: Any, _attr: Any, value: tuple[Any, ...]) -> None:
    if not value:
        raise ValueError("must not be empty")


def _ratio(_inst: Any, _attr: Any, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"must be in [0, 1), got {value}")


def _arch_strings(_inst: Any, _attr: Any, value: tuple[str, ...]) -> None:
    from timm.models._efficientnet_builder import decode_arch_def

    if not value:
        raise ValueError("must hold at least one timm arch string")
    try:
        decode_arch_def([list(value)])
    except Exception as e:
        raise ValueError(f"not a timm arch string stage: {list(value)} ({e})") from None


def _distinct_cells(_inst: Any, _attr: Any, value: tuple[CellConfig, ...]) -> None:
    if not value:
        raise ValueError("a block needs at least one cell")
    for i, a in enumerate(value):
        for j in range(i):
            if (value[j].depth, value[j].width) == (a.depth, a.width):
                width = a.width if a.width is not None else "the teacher block's"
                raise ValueError(f"cells {j} and {i} are identical (depth {a.depth}, width "
                                 f"{width}); give them other depths or widths")


@frozen
class CellConfig:
    """One cell: ``depth`` layers of ``width`` output channels."""

    depth: int = field(validator=dnax.positive, metadata={"help": "layers in the cell"})
    width: int | None = field(default=None, validator=dnax.positive, metadata={
        "help": "output channels (default: the teacher block's; rounded to 8 as timm does)"})


@frozen
class BlockConfig:
    """The cells searched for one block."""

    cells: tuple[CellConfig, ...] = field(validator=_distinct_cells, metadata={
        "help": "cells of the block ([{depth = 2, width = 24}, ...])"})


@frozen
class MBConvSpaceConfig:
    """Multi-cell MBConv search space (the paper's, or cells of your own)."""

    preset: Literal["paper", "custom"] = field(default="paper", metadata={
        "help": "'paper': DNA's cells and widths; 'custom': the cells given in blocks"})
    blocks: tuple[BlockConfig, ...] = field(default=(), metadata={
        "help": "per block its cells (array of tables); overrides the preset when given"})
    kernels: tuple[int, ...] = field(default=(3, 5, 7), validator=_odd, metadata={
        "help": "depthwise kernel choices of every layer"})
    expansions: tuple[float, ...] = field(default=(3.0, 6.0), validator=[_non_empty, dnax.positive],
                                          metadata={"help": "expansion-ratio choices"})
    se_ratio: float = field(default=0.25, validator=_ratio, metadata={
        "help": "squeeze-excite ratio of every op (0: none)"})
    act: Literal["swish", "relu", "relu6", "hard_swish", "mish"] = field(default="swish", metadata={
        "help": "activation of every op and of the stem and head"})
    stem_size: int = field(default=32, validator=dnax.positive, metadata={
        "help": "channels of the fixed stem conv"})
    stem_stage: tuple[str, ...] = field(default=("ds_r1_k3_s1_e1_c16_se0.25",),
                                        validator=_arch_strings, metadata={
        "help": "timm arch strings of the fixed first stage (not searched)"})
    num_features: int = field(default=1280, validator=dnax.positive, metadata={
        "help": "channels of the head conv before pooling"})


class Candidates(Sequence[dnax.Candidate]):
    """The candidates of one block, made on demand: cell by cell, ops in itertools.product order
    (first layer most significant)."""

    def __init__(self, block: int, cells: Sequence[dnax.CellSpec],
                 arch: Sequence[Sequence[Sequence[str]]]):
        self.block = block
        self.cells = tuple(cells)
        self.arch = arch  # [cell][layer][op] -> arch string
        self.starts = list(itertools.accumulate((c.num_candidates for c in self.cells),
                                                initial=0))

    def __len__(self) -> int:
        return self.starts[-1]

    def _make(self, index: int, c: int, ops: tuple[int, ...]) -> dnax.Candidate:
        arch = tuple(self.arch[c][j][o] for j, o in enumerate(ops))
        return dnax.Candidate(self.block, index, c, ops, arch)

    @overload
    def __getitem__(self, i: int) -> dnax.Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> list[dnax.Candidate]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"candidate {i} of block {self.block} (it has {n})")
        c = next(k for k in range(len(self.cells)) if i < self.starts[k + 1])
        rest, ops = i - self.starts[c], []
        n_ops = len(self.cells[c].ops)
        for _ in range(self.cells[c].depth):
            rest, o = divmod(rest, n_ops)
            ops.append(o)
        return self._make(i, c, tuple(reversed(ops)))

    def __iter__(self) -> Iterator[dnax.Candidate]:
        index = 0
        for c, cell in enumerate(self.cells):
            for ops in itertools.product(range(len(cell.ops)), repeat=cell.depth):
                yield self._make(index, c, ops)
                index += 1


class MBConvSpace(dnax.SearchSpace):
    """Multi-cell MBConv space (DNA): per block several cells of different depth, each layer
    choosing kernel x expansion; every op is the timm block of its arch string.

    Where a cell's width differs from the teacher's channels, 1x1 conv + BN adapters bridge them;
    they are not part of any candidate (nor of its cost)."""

    Config = MBConvSpaceConfig

    @classmethod
    def check(cls, config: MBConvSpaceConfig, pipeline: Any, registry: Any) -> list[str]:
        if config.preset == "custom" and not config.blocks:
            return ["blocks: required when preset = 'custom'"]
        return []

    # --- the resolved space ------------------------------------------------------------------

    @cached_property
    def layout(self) -> tuple[tuple[tuple[int, int | None], ...], ...]:
        """Per block, per cell: (depth, width or None for the teacher's)."""
        if self.config.blocks:
            return tuple(tuple((c.depth, c.width) for c in b.cells) for b in self.config.blocks)
        if self.config.preset == "custom":
            raise dnax.ConfigError("$.space.blocks: required when preset = 'custom'")
        return PRESETS[self.config.preset]

    @cached_property
    def op_choices(self) -> tuple[tuple[int, float], ...]:
        """(kernel, expansion) of each op index."""
        return tuple(itertools.product(self.config.kernels, self.config.expansions))

    @cached_property
    def op_names(self) -> tuple[str, ...]:
        return tuple(f"k{k}_e{e:g}" for k, e in self.op_choices)

    @cached_property
    def stem_width(self) -> int:
        """Output channels of the fixed stem stage (block 0's student input width)."""
        return round_width(decode([list(self.config.stem_stage)])[-1][-1]["out_chs"])

    def check_blocks(self, blocks: Sequence[dnax.BlockSpec]) -> None:
        """Refuse a teacher whose number of blocks differs from the space's."""
        if len(blocks) != len(self.layout):
            raise dnax.ConfigError(f"$.space.blocks: the space has {len(self.layout)} blocks, "
                                   f"the teacher has {len(blocks)}")

    def _layout(self, spec: dnax.BlockSpec) -> tuple[tuple[int, int | None], ...]:
        if spec.index >= len(self.layout):
            raise dnax.ConfigError(f"$.space.blocks: the space has {len(self.layout)} blocks, "
                                   f"the teacher has at least {spec.index + 1}")
        return self.layout[spec.index]

    def cell_width(self, spec: dnax.BlockSpec, cell: int) -> int:
        """Output channels of cell ``cell`` of ``spec`` (the teacher block's when not given),
        rounded as timm rounds channels."""
        return round_width(self._layout(spec)[cell][1] or spec.out_chs)

    def input_width(self, spec: dnax.BlockSpec) -> int:
        """The width the supernet's cells of ``spec`` take: the stem stage's for block 0, else
        the previous block's first cell's. (In the final network a block's first layer takes
        the width of the cell chosen before it; the cost models count it that way.)"""
        if spec.index == 0:
            return self.stem_width
        prev = self.layout[spec.index - 1][0][1]
        return round_width(prev or spec.in_chs)

    def widths(self, spec: dnax.BlockSpec) -> tuple[int, int]:
        """(student input width, width of the first cell) of ``spec``."""
        return self.input_width(spec), self.cell_width(spec, 0)

    def arch(self, spec: dnax.BlockSpec, layer: int, op: int, cell: int = 0) -> str:
        """The timm arch string of ``op`` at ``layer`` of cell ``cell`` of ``spec``."""
        k, e = self.op_choices[op]
        stride = spec.stride if layer == 0 else 1
        se = f"_se{self.config.se_ratio:g}" if self.config.se_ratio else ""
        return (f"ir_r1_k{k}_s{stride}_e{e:g}_c{self.cell_width(spec, cell)}{se}"
                f"{ACT_SUFFIX[self.config.act]}")

    # --- the SearchSpace interface -----------------------------------------------------------

    def cells(self, spec: dnax.BlockSpec) -> tuple[dnax.CellSpec, ...]:
        out = tuple(dnax.CellSpec(i, depth, self.cell_width(spec, i), self.op_names)
                    for i, (depth, _) in enumerate(self._layout(spec)))
        for i, a in enumerate(out):
            for b in out[:i]:
                if (a.depth, a.out_chs) == (b.depth, b.out_chs):
                    raise dnax.ConfigError(
                        f"$.space.blocks[{spec.index}].cells: cells {b.index} and {a.index} are "
                        f"identical (depth {a.depth}, width {a.out_chs}); give them other "
                        "depths or widths")
        return out

    def candidates(self, spec: dnax.BlockSpec) -> Candidates:
        cells = self.cells(spec)
        n_ops = len(self.op_choices)
        arch = [[[self.arch(spec, j, o, c.index) for o in range(n_ops)] for j in range(c.depth)]
                for c in cells]
        return Candidates(spec.index, cells, arch)

    def build_supernet(self, spec: dnax.BlockSpec) -> BlockSupernet:
        from timm.models._efficientnet_builder import efficientnet_init_weights

        in_w = self.input_width(spec)
        cells = []
        for cell in self.cells(spec):
            out_w = cell.out_chs
            layers = [[self.build_op(spec, j, o, in_w if j == 0 else out_w, cell.index)
                       for o in range(len(self.op_choices))] for j in range(cell.depth)]
            cells.append(Cell(adapter(spec.in_chs, in_w), layers, adapter(out_w, spec.out_chs)))
        net = BlockSupernet(cells)
        efficientnet_init_weights(net)
        return net

    def build_op(self, spec: dnax.BlockSpec, layer: int, op: int, in_chs: int, cell: int = 0
                 ) -> nn.Module:
        """The timm block of one op's arch string, as the network's builder makes it."""
        return build_layer(self.arch(spec, layer, op, cell), in_chs, self.model_kwargs())[0]

    def arch_def(self, blocks: Sequence[dnax.BlockSpec], chosen: Sequence[dnax.Candidate]
                 ) -> list[list[str]]:
        return [list(self.config.stem_stage), *[list(c.arch) for c in chosen]]

    def model_kwargs(self) -> dict[str, Any]:
        return {"stem_size": self.config.stem_size, "num_features": self.config.num_features,
                "act_layer": self.config.act}

    def fingerprint(self) -> str:
        body = {"space": "mbconv", "version": _VERSION, "layout": self.layout,
                **attrs.asdict(self.config, recurse=True)}
        body.pop("blocks")
        body.pop("preset")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dnax.hookimpl
def dnax_register_spaces(register):
    register("mbconv", MBConvSpace)
