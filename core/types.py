"""The values that flow between stages: frozen attrs classes, serialisable with cattrs."""

from __future__ import annotations

import math
from typing import Any

import attrs
from attrs import field, frozen


@frozen
class BlockSpec:
    """One searched block: a teacher stage whose input and output the student block must match.

    ``stage`` is the teacher's stage index (``model.blocks[stage]`` for timm EfficientNets);
    ``index`` is the block's position among the searched blocks.
    """

    index: int
    stage: int
    in_chs: int
    out_chs: int
    stride: int
    in_size: int
    out_size: int


@frozen
class DataConfig:
    """How images are prepared for the teacher (timm's ``resolve_model_data_config`` fields)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0


@frozen
class CellSpec:
    """One depth/width variant inside a block: ``depth`` layers, each choosing one of ``ops``."""

    index: int
    depth: int
    out_chs: int
    ops: tuple[str, ...]

    @property
    def num_candidates(self) -> int:
        return len(self.ops) ** self.depth


@frozen
class Candidate:
    """One cell of a block plus one op per layer of that cell.

    ``arch`` holds one timm arch string per layer, so the retrained network is built from exactly
    the layer definitions that were searched.
    """

    block: int
    index: int
    cell: int
    ops: tuple[int, ...]
    arch: tuple[str, ...]


@frozen
class BlockPlan:
    spec: BlockSpec
    cells: tuple[CellSpec, ...]

    @property
    def num_candidates(self) -> int:
        return sum(c.num_candidates for c in self.cells)


@frozen
class Plan:
    """What a pipeline will search: the teacher's blocks and the size of each block's space."""

    teacher: str
    space: str
    resolution: int
    blocks: tuple[BlockPlan, ...]

    @property
    def num_networks(self) -> int:
        return math.prod(b.num_candidates for b in self.blocks)

    def to_json(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "space": self.space,
            "resolution": self.resolution,
            "blocks": [
                {
                    **attrs.asdict(b.spec),
                    "cells": [{"depth": c.depth, "out_chs": c.out_chs, "ops": len(c.ops)}
                              for c in b.cells],
                    "num_candidates": b.num_candidates,
                }
                for b in self.blocks
            ],
            "num_networks": self.num_networks,
        }


@frozen
class TeacherResult:
    """What the teacher stage leaves: its weights (relative to the run dir) and its blocks."""

    model: str
    weights: str | None
    num_classes: int
    blocks: tuple[BlockSpec, ...]
    data_config: DataConfig
    metrics: dict[str, float] = field(factory=dict)


@frozen
class BlockCheckpoint:
    """A trained block supernet stored as safetensors (path relative to the run dir)."""

    block: int
    path: str
    epochs: int
    steps: int
    loss: float


@frozen
class TrainResult:
    blocks: tuple[BlockCheckpoint, ...]


@frozen
class RankingRef:
    """Where one block's scores are stored (relative paths) and how many candidates it rated."""

    block: int
    scores: str
    table: str
    num_candidates: int


@frozen
class RankResult:
    blocks: tuple[RankingRef, ...]
    key: str = "nmae"


@frozen(eq=False)
class BlockRanking:
    """Every candidate of one block with its scores (1-D arrays, one entry per candidate) and,
    from the select stage on, its costs.

    Cells of one block may differ in width, and a block's first layer then costs what the width
    it receives makes it cost. So ``costs[metric]`` is 1-D (one entry per candidate) where one
    width can enter the block, and 2-D ``(len(prev.out_widths), candidates)`` where several can,
    ``prev`` being the previous block's ranking: row ``r`` is the cost when the previous block's
    chosen cell is ``prev.out_widths[r]`` wide (the measurement package's ``network_costs``
    sums a whole network's costs this way).
    """

    block: int
    candidates: tuple[Candidate, ...]
    scores: dict[str, Any]
    costs: dict[str, Any] = field(factory=dict)
    #: output width of each cell (``SearchSpace.cells(block)[c].out_chs``); set with the costs
    cell_widths: tuple[int, ...] = ()

    def out_width(self, candidate: int) -> int:
        """The width candidate ``candidate`` passes to the next block."""
        return self.cell_widths[self.candidates[candidate].cell]

    @property
    def out_widths(self) -> tuple[int, ...]:
        """The distinct widths this block can pass on, ascending: the rows of the next block's
        2-D costs when there are several."""
        return tuple(sorted(set(self.cell_widths)))


@frozen
class Selection:
    """The chosen network: one candidate index per block, its rating and predicted costs."""

    candidates: tuple[int, ...]
    score: float
    costs: dict[str, float]
    budgets: dict[str, float] = field(factory=dict)
    #: from the search space (:meth:`dnax.Selector.selection` fills them in): the whole
    #: network's timm arch def and the other ``timm.models.efficientnet.EfficientNet``
    #: arguments (stem_size, num_features, ...)
    arch_def: tuple[tuple[str, ...], ...] = ()
    model_kwargs: dict[str, Any] = field(factory=dict)
    #: False when the selector stopped (e.g. at its time limit) before proving ``score`` best;
    #: ``gap`` is then the proven relative optimality gap (score - lower bound) / |score|
    optimal: bool = True
    gap: float = 0.0


@frozen
class RetrainResult:
    model: str
    meta: str
    metrics: dict[str, float] = field(factory=dict)
