"""What a stage receives: the config, the plugins, the run directory, the device and the hooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attrs import define, field, fields, frozen

from .errors import PluginError
from .interfaces import PLUGIN_KINDS
from .loading import Workers, batches
from .rundir import RunDir

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .interfaces import (
        BlockTrainer,
        CostModel,
        DataSource,
        Evaluator,
        Retrainer,
        SearchSpace,
        Selector,
        Teacher,
    )
    from .types import BlockRanking, RankingRef


class QuietHooks:
    """The hook relay of processes other than 0 under torchrun: lifecycle hooks are called
    once, on process 0, so observers (progress bars, loggers, trackers) never see duplicates."""

    def __getattr__(self, name: str) -> Any:
        return _ignore


def _ignore(**_kwargs: Any) -> None:
    return None


@frozen
class DistInfo:
    """Where this process stands under torchrun (process 0 of 1 without it); ``rank`` is a stage."""

    #: torchrun's RANK, this process's number among all of the run's processes
    process_rank: int = 0
    world_size: int = 1
    #: torchrun's LOCAL_RANK, its number on this host
    local_process_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.process_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Processes of this run on this host (torchrun's LOCAL_WORLD_SIZE)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


@frozen
class Plugins:
    """The pipeline's plugin instances (``None`` where the pipeline has no such table): one field
    per kind of :data:`dnax.interfaces.PLUGIN_KINDS`, in its order, named as the kind."""

    data: DataSource
    teacher: Teacher
    space: SearchSpace
    trainer: BlockTrainer | None = None
    evaluator: Evaluator | None = None
    costs: tuple[CostModel, ...] = ()
    selector: Selector | None = None
    retrainer: Retrainer | None = None


if [a.name for a in fields(Plugins)] != [k.name for k in PLUGIN_KINDS]:  # pragma: no cover
    raise TypeError("dnax.Plugins needs one field per kind of dnax.interfaces.PLUGIN_KINDS, in "
                    "its order")


@define
class StageContext:
    """Handed to every stage method. ``results`` holds the earlier stages' results by name."""

    stage: str
    config: PipelineConfig
    plugins: Plugins
    run_dir: RunDir
    hook: Any
    device: str = "cpu"
    dist: DistInfo = field(factory=DistInfo)
    results: Mapping[str, Any] = field(factory=dict)
    _ranked: set[int] = field(factory=set, init=False, repr=False)

    @property
    def seed(self) -> int:
        return self.config.pipeline.seed

    @property
    def resolution(self) -> int:
        return self.config.pipeline.resolution

    def progress(self, task: str, completed: int, total: int | None = None, **info: Any) -> None:
        """Report progress; the CLI renders it, process 0 only."""
        if self.dist.is_main:
            self.hook.dnax_progress(stage=self.stage, task=task, completed=completed,
                                    total=total, info=info)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self.hook.dnax_log(stage=self.stage, message=message)

    def save_ranking(self, ranking: BlockRanking, *, space_hash: str = "") -> RankingRef:
        """Store a block's ranking (:meth:`RunDir.save_ranking`; call it on process 0) and hand it
        to the ``dnax_block_ranked`` observers as it is, without reading it back. A ranking
        whose arrays do not have one entry per candidate, or of a block the teacher does not
        have, is a PluginError and nothing is written. ``block`` is None for the observers only
        where the context holds no teacher result (outside the runner)."""
        evaluator = type(self.plugins.evaluator).__name__
        for name, arr in (ranking.scores | ranking.costs).items():
            if len(arr) != len(ranking.candidates):
                raise PluginError(f"$.evaluator: {evaluator} stored block {ranking.block}'s "
                                  f"'{name}' with {len(arr)} entries for "
                                  f"{len(ranking.candidates)} candidates")
        teacher = self.results.get("teacher")
        block = None  # outside the runner a context may hold no teacher result
        if teacher is not None:
            block = next((b for b in teacher.blocks if b.index == ranking.block), None)
            if block is None:
                raise PluginError(f"$.evaluator: {evaluator} stored a ranking for block "
                                  f"{ranking.block}, which the teacher does not have")
        ref = self.run_dir.save_ranking(ranking, space_hash=space_hash)
        self.hook.dnax_block_ranked(block=block, ranking=ranking)
        self._ranked.add(ranking.block)
        return ref

    @property
    def ranked(self) -> frozenset[int]:
        """The blocks whose rankings :meth:`save_ranking` has stored in this stage."""
        return frozenset(self._ranked)

    @property
    def data_config(self) -> Any:
        """How images are prepared for the teacher at the pipeline's resolution."""
        return self.plugins.teacher.data_config(self.resolution)

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False,
               augment: bool = False, drop_last: bool = False, num_workers: Workers = "auto",
               data_config: Any = None, seed: int | None = None) -> Any:
        """Batches of the data source's ``split`` (see :func:`dnax.loading.batches`: on the
        device for in-memory data, else from workers); sharded with a DistributedSampler under
        torchrun (``batch_size`` is per process). Shuffling is seeded by ``seed`` (default: the
        pipeline's)."""
        import torch
        from torch.utils.data import DistributedSampler

        dataset = self.plugins.data.dataset(split, data_config or self.data_config,
                                            augment=augment)
        sampler = None
        seed = self.seed if seed is None else seed
        if self.dist.enabled:
            sampler = DistributedSampler(dataset, self.dist.world_size, self.dist.process_rank,
                                         shuffle=shuffle, seed=seed, drop_last=drop_last)
        return batches(dataset, self.device, batch_size=batch_size, shuffle=shuffle,
                       drop_last=drop_last, sampler=sampler, num_workers=num_workers,
                       generator=torch.Generator().manual_seed(seed),
                       local_processes=self.dist.local_world_size)
