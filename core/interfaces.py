"""The abstract interfaces of a DNA pipeline. Each plugin subclasses one of them.

A plugin class is built as ``cls(config)`` where ``config`` is an instance of its attrs config
class (validated from the pipeline TOML). The stages call one method each:

=========  ===================  =========================================================
stage      interface            method
=========  ===================  =========================================================
teacher    :class:`Teacher`     ``prepare(ctx)``: load local weights, or train the teacher
train      :class:`BlockTrainer` ``train(ctx)``: train every block's supernet
rank       :class:`Evaluator`   ``rank(ctx)``: score every candidate of every block
select     :class:`Selector`    ``select(ctx, rankings, costs)``: pick the network
retrain    :class:`Retrainer`   ``retrain(ctx, selection)``: train it from scratch
=========  ===================  =========================================================

:class:`DataSource`, :class:`SearchSpace` and :class:`CostModel` serve those stages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .types import (
    BlockRanking,
    BlockSpec,
    Candidate,
    CellSpec,
    DataConfig,
    RankResult,
    RetrainResult,
    Selection,
    TeacherResult,
    TrainResult,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .context import StageContext

#: ``train`` trains supernets (and the retrained network), ``heldout`` is kept out of training for
#: ranking candidates and never overlaps ``train``; ``val`` measures accuracy.
Split = Literal["train", "heldout", "val"]


class Plugin:
    """Base of every plugin: holds its validated config."""

    #: the pipeline table this kind is configured in, e.g. ``"teacher"``
    kind: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config


class DataSource(Plugin, ABC):
    """Real images and labels, split into train / heldout / val."""

    kind = "data"

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of classes of the labels."""

    @abstractmethod
    def dataset(self, split: Split, data_config: DataConfig, *, augment: bool = False
                ) -> torch.utils.data.Dataset:
        """A dataset of ``(image CHW float tensor, int label)`` prepared as ``data_config`` says
        (size, mean, std; grey images as 3 channels)."""


class Teacher(Plugin, ABC):
    """A trained network cut into blocks at stage boundaries."""

    kind = "teacher"

    @abstractmethod
    def blocks(self, resolution: int) -> tuple[BlockSpec, ...]:
        """The searched blocks, read off the model at ``resolution`` (no weights needed)."""

    @abstractmethod
    def data_config(self, resolution: int) -> DataConfig:
        """How images must be prepared for this teacher."""

    @abstractmethod
    def prepare(self, ctx: StageContext) -> TeacherResult:
        """Stage ``teacher``: load local weights or train the teacher on ``ctx``'s data, and store
        what :meth:`load` needs in the run directory."""

    @abstractmethod
    def load(self, ctx: StageContext, result: TeacherResult) -> torch.nn.Module:
        """The prepared teacher on ``ctx.device``, in eval mode."""

    @abstractmethod
    def block_features(self, model: torch.nn.Module, images: torch.Tensor
                       ) -> list[torch.Tensor]:
        """One teacher forward: ``[input of block 0, output of block 0, ..., of block N-1]``."""


class SearchSpace(Plugin, ABC):
    """Per block, the cells and the op choices of their layers."""

    kind = "space"

    @abstractmethod
    def cells(self, block: BlockSpec) -> tuple[CellSpec, ...]:
        """The cells (depth/width variants) searched for ``block``."""

    @abstractmethod
    def candidates(self, block: BlockSpec) -> Sequence[Candidate]:
        """Every candidate of ``block``, indexed as the rankings index them."""

    @abstractmethod
    def build_supernet(self, block: BlockSpec) -> torch.nn.Module:
        """The student supernet of ``block`` (every op of every layer of every cell)."""

    @abstractmethod
    def arch_def(self, blocks: Sequence[BlockSpec], chosen: Sequence[Candidate]
                 ) -> list[list[str]]:
        """The timm arch def of the whole network: fixed stages plus one chosen candidate per
        block."""

    def check_blocks(self, blocks: Sequence[BlockSpec]) -> None:
        """Refuse (ConfigError) a teacher whose blocks do not fit this space, e.g. another
        number of blocks. Called with all blocks before planning and training."""

    def model_kwargs(self) -> dict[str, Any]:
        """Other arguments of timm's ``EfficientNet`` for the whole network (stem_size,
        num_features, act_layer name, ...); JSON-serialisable."""
        return {}

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of everything that decides the space; stored beside trained weights."""


class BlockTrainer(Plugin, ABC):
    """Trains every block's supernet against the teacher's block outputs."""

    kind = "trainer"

    @abstractmethod
    def train(self, ctx: StageContext) -> TrainResult:
        """Stage ``train``: write one safetensors file per block and return where they are."""


class Evaluator(Plugin, ABC):
    """Scores every candidate of every block on held-out images."""

    kind = "evaluator"

    @abstractmethod
    def rank(self, ctx: StageContext) -> RankResult:
        """Stage ``rank``: store each block's scores (see :meth:`RunDir.save_ranking`)."""


class CostModel(Plugin, ABC):
    """An additive cost: per candidate of each block, plus the fixed parts of the network."""

    kind = "costs"

    #: the metric's name as budgets refer to it, e.g. ``"params"``
    metric: ClassVar[str] = ""

    @abstractmethod
    def candidate_costs(self, ctx: StageContext, block: BlockSpec,
                        candidates: Sequence[Candidate]) -> np.ndarray:
        """The cost of each candidate of ``block`` (adapters excluded)."""

    @abstractmethod
    def fixed_cost(self, ctx: StageContext, blocks: Sequence[BlockSpec]) -> float:
        """The cost of everything not searched: stem, head, unsearched stages."""


class Selector(Plugin, ABC):
    """Picks the best network from the block rankings under budgets."""

    kind = "selector"

    @abstractmethod
    def select(self, ctx: StageContext, rankings: Sequence[BlockRanking],
               fixed_costs: Mapping[str, float]) -> Selection:
        """Stage ``select``: ``rankings[i].costs[metric]`` holds each candidate's cost."""


class Retrainer(Plugin, ABC):
    """Trains the selected network from scratch and exports it."""

    kind = "retrainer"

    @abstractmethod
    def retrain(self, ctx: StageContext, selection: Selection) -> RetrainResult:
        """Stage ``retrain``: train, evaluate and export the selected network."""


#: interface of each kind, in pipeline order
KINDS: dict[str, type[Plugin]] = {
    "data": DataSource,
    "teacher": Teacher,
    "space": SearchSpace,
    "trainer": BlockTrainer,
    "evaluator": Evaluator,
    "costs": CostModel,
    "selector": Selector,
    "retrainer": Retrainer,
}
