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
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from attrs import frozen

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

    from dnax.registry import Registry

    from .config import PipelineConfig
    from .context import StageContext

#: ``train`` trains supernets (and the retrained network), ``heldout`` is kept out of training for
#: ranking candidates and never overlaps ``train``; ``val`` measures accuracy.
Split = Literal["train", "heldout", "val"]


class SupernetCell(Protocol):
    """One cell of a block supernet: ``enter`` (teacher width to the cell's), ``layers[j][o]``
    (op ``o`` of layer ``j``) and ``exit`` (back to the teacher's width)."""

    enter: torch.nn.Module
    layers: Sequence[Sequence[torch.nn.Module]]
    exit: torch.nn.Module


class Supernet(Protocol):
    """A block supernet: its ``cells``, and ``forward(x, cell, ops)`` running one path. The
    built-in evaluator's prefix-shared tree walk relies on exactly this shape; the toolkit
    (its ``supernet`` module) has base classes that meet it. Check an object at run time with
    :func:`supernet_shape`, not ``isinstance``."""

    cells: Sequence[SupernetCell]

    def __call__(self, x: torch.Tensor, cell: int, ops: Sequence[int]) -> torch.Tensor: ...


def supernet_shape(net: object) -> tuple[tuple[int, ...], ...] | None:
    """The number of ops of each layer of each cell of ``net``, or None when ``net`` does not
    have the :class:`Supernet` shape (callable, ``cells``, each with callable ``enter`` and
    ``exit`` and ``layers[j][o]``).

    Attributes are looked up with ``getattr``, so an ``nn.Module``'s submodules count. (An
    ``isinstance`` check against a protocol with attribute members cannot do this on every
    Python: since 3.12 it looks attributes up statically and misses ``_modules``.)
    """
    cells = getattr(net, "cells", None)
    if not callable(net) or not _indexable(cells):
        return None
    shape = []
    for cell in cells:
        layers = getattr(cell, "layers", None)
        if not (callable(getattr(cell, "enter", None)) and callable(getattr(cell, "exit", None))
                and _indexable(layers) and all(_indexable(layer) for layer in layers)):
            return None
        shape.append(tuple(len(layer) for layer in layers))
    return tuple(shape)


def _indexable(x: object) -> bool:
    """``x`` has a length and items by index (a list, a tuple, an ``nn.ModuleList``)."""
    return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, str | bytes)


class Plugin:
    """Base of every plugin: holds its validated config.

    Two class-level contracts, both optional:

    - :attr:`Config`: the attrs class that validates the plugin's pipeline table; the registry
      uses it when ``register(name, cls)`` is called without ``config_cls``.
    - :meth:`check`: cross-table checks run once the whole pipeline has loaded.
    """

    #: the attrs config class of this plugin's pipeline table (``None``: pass ``config_cls`` to
    #: ``register``)
    Config: ClassVar[type | None] = None

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def check(cls, config: Any, pipeline: PipelineConfig, registry: Registry) -> list[str]:
        """Problems of ``config`` (this plugin's validated config) that only the whole pipeline
        reveals, e.g. a budget on a metric no ``[[costs]]`` model measures.

        Called after every table has loaded and converted without error, with the loaded
        ``pipeline`` and the ``registry`` that resolved its plugin names. Each problem is one
        line, its path relative to the plugin's table (``"budgets.latency: ..."`` becomes
        ``$.selector.budgets.latency: ...``). The default finds none.
        """
        return []


class DataSource(Plugin, ABC):
    """Real images and labels, split into train / heldout / val."""

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

    @abstractmethod
    def cells(self, block: BlockSpec) -> tuple[CellSpec, ...]:
        """The cells (depth/width variants) searched for ``block``."""

    @abstractmethod
    def candidates(self, block: BlockSpec) -> Sequence[Candidate]:
        """Every candidate of ``block``, indexed as the rankings index them."""

    @abstractmethod
    def build_supernet(self, block: BlockSpec) -> Supernet:
        """The student supernet of ``block`` (every op of every layer of every cell): one cell
        per :meth:`cells` entry, each with ``enter``, ``layers[j][o]`` and ``exit``, and
        ``forward(x, cell, ops)`` (the :class:`Supernet` protocol; the plugin toolkit's
        ``BlockSupernet`` and ``Cell`` meet it). The toolkit's ``load_supernet`` checks that
        shape before an evaluator scores it."""

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

    @abstractmethod
    def train(self, ctx: StageContext) -> TrainResult:
        """Stage ``train``: write one safetensors file per block and return where they are."""


class Evaluator(Plugin, ABC):
    """Scores every candidate of every block on held-out images."""

    @abstractmethod
    def rank(self, ctx: StageContext) -> RankResult:
        """Stage ``rank``: store each block's scores with :meth:`StageContext.save_ranking`
        (process 0), which also hands them to the ``dnax_block_ranked`` observers."""


class CostModel(Plugin, ABC):
    """An additive cost: per candidate of each block, plus the fixed parts of the network."""

    #: the metric's name as budgets refer to it, e.g. ``"params"``
    metric: ClassVar[str] = ""
    #: True when the costs follow from the config, the space and the teacher's blocks alone (no
    #: trained weights, no run folder): ``dnax validate`` then checks budgets on this metric
    #: against the cheapest network before any training
    static: ClassVar[bool] = False

    @abstractmethod
    def candidate_costs(self, ctx: StageContext, block: BlockSpec,
                        candidates: Sequence[Candidate]) -> np.ndarray:
        """The cost of each candidate of ``block`` (adapters excluded)."""

    @abstractmethod
    def fixed_cost(self, ctx: StageContext, blocks: Sequence[BlockSpec]) -> float:
        """The cost of everything not searched: stem, head, unsearched stages."""


class NetworkTimer(ABC):
    """Optional, beside :class:`CostModel`: a cost model that can time a whole network the way
    its own costs were measured. The retrainer then reports the retrained network's measured
    latency beside the selection's prediction."""

    @abstractmethod
    def measure_network(self, ctx: StageContext, model: Any) -> dict[str, Any]:
        """``model`` timed end to end: ``{"ms": ..., ...}``, or ``{"skipped": reason}`` where
        this machine cannot time it as the costs were timed."""


class Selector(Plugin, ABC):
    """Picks the best network from the block rankings under budgets."""

    @abstractmethod
    def select(self, ctx: StageContext, rankings: Sequence[BlockRanking],
               fixed_costs: Mapping[str, float]) -> Selection:
        """Stage ``select``: ``rankings[i].costs[metric]`` holds each candidate's cost (see
        :mod:`dnax.costing`). Returns a complete :class:`Selection`: make it with
        :meth:`selection`."""

    def selection(self, ctx: StageContext, rankings: Sequence[BlockRanking],
                  candidates: Sequence[int], score: float, costs: Mapping[str, float],
                  budgets: Mapping[str, float] | None = None, **fields: Any) -> Selection:
        """The complete :class:`Selection` of ``candidates`` (one index per block of
        ``rankings``): the space's timm arch def and model arguments filled in."""
        chosen = [r.candidates[i] for r, i in zip(rankings, candidates, strict=True)]
        arch = ctx.plugins.space.arch_def(ctx.results["teacher"].blocks, chosen)
        return Selection(tuple(int(i) for i in candidates), float(score),
                         {k: float(v) for k, v in costs.items()}, dict(budgets or {}),
                         arch_def=tuple(tuple(s) for s in arch),
                         model_kwargs=ctx.plugins.space.model_kwargs(), **fields)


class Retrainer(Plugin, ABC):
    """Trains the selected network from scratch and exports it."""

    @abstractmethod
    def retrain(self, ctx: StageContext, selection: Selection) -> RetrainResult:
        """Stage ``retrain``: train, evaluate and export the selected network."""


@frozen
class Kind:
    """One kind of plugin: what it subclasses, how it is configured, registered and run."""

    #: the kind's name, which is also its pipeline table's name, e.g. ``"teacher"``
    name: str
    #: the interface every plugin of this kind subclasses
    interface: type[Plugin]
    #: the hook (see :mod:`dnax.hookspecs`) whose implementations register plugins of this kind
    hook: str
    #: what the plugins of this kind are, in the plural, e.g. ``"search spaces"``
    title: str
    #: the stage that this kind's plugin runs, if any
    stage: str | None = None
    #: an array of tables (``[[costs]]``): any number of plugins, none required
    many: bool = False
    #: a pipeline without this table is refused
    required: bool = False

    @property
    def header(self) -> str:
        """The table's TOML header: ``[teacher]``, ``[[costs]]``."""
        return f"[[{self.name}]]" if self.many else f"[{self.name}]"


#: every plugin kind, in pipeline order: the one table the config loader, the runner, the
#: registry and the CLI read
PLUGIN_KINDS: tuple[Kind, ...] = (
    Kind("data", DataSource, "dnax_register_data", "data sources", required=True),
    Kind("teacher", Teacher, "dnax_register_teachers", "teachers", stage="teacher",
         required=True),
    Kind("space", SearchSpace, "dnax_register_spaces", "search spaces", required=True),
    Kind("trainer", BlockTrainer, "dnax_register_trainers", "block trainers", stage="train"),
    Kind("evaluator", Evaluator, "dnax_register_evaluators", "evaluators", stage="rank"),
    Kind("costs", CostModel, "dnax_register_costs", "cost models", many=True),
    Kind("selector", Selector, "dnax_register_selectors", "selectors", stage="select"),
    Kind("retrainer", Retrainer, "dnax_register_retrainers", "retrainers", stage="retrain"),
)
#: each kind by name
KIND: Mapping[str, Kind] = {k.name: k for k in PLUGIN_KINDS}
