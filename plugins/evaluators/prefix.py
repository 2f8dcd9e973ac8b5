"""The ``prefix`` evaluator: every candidate of every block scored on held-out images, with the
computation (and BatchNorm recalibration) of shared op prefixes done once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.supernet import load_supernet

from .tree import (
    MAX_BATCH,
    METRICS,
    cell_shape,
    make_groups,
    score_weights,
    shard_prefixes,
    walk_cell,
)


@frozen
class PrefixConfig:
    """Scores every candidate on held-out images with a prefix-shared tree walk."""

    batches: int = field(default=16, validator=dnax.positive, metadata={
        "help": "held-out batches every candidate is scored on (the official code: about 19 "
                "of 64 per GPU); a smaller heldout split is used whole, with one log line"})
    batch_size: int = field(default=64, validator=dnax.positive, metadata={
        "help": "images per held-out batch (and per recalibration batch)"})
    recalib: Literal["train", "same", "separate", "off"] = field(default="train", metadata={
        "help": "BatchNorm recalibration of every candidate: 'train' on recalib_batches fixed "
                "batches of train-split images, drawn once (official code), 'same' on each "
                "scoring batch itself, 'separate' on recalib_batches held-out batches that "
                "are not scored, 'off' none (the supernet's statistics)"})
    recalib_batches: int = field(default=1, validator=dnax.positive, metadata={
        "help": "batches of batch_size images that recalibrate BatchNorm when recalib = "
                "'train' or 'separate'"})
    normalise: Literal["global", "channel"] = field(default="global", metadata={
        "help": "nmse/nmae divide by the teacher output's variance/std over the whole tensor "
                "(official) or per channel (each std floored at 0.1 x the global one)"})
    shard_depth: int = field(default=2, validator=dnax.positive, metadata={
        "help": "under torchrun, sub-trees under op prefixes of this many layers go to ranks"})
    amp: bool = field(default=True, metadata={"help": "autocast (bfloat16/float16) on CUDA"})
    max_batch: int = field(default=MAX_BATCH, validator=dnax.positive, metadata={
        "help": "scoring images one forward of the tree walk takes (the scoring batches run "
                "together up to it; lower it when the device runs out of memory)",
        "runtime": True})
    num_workers: dnax.Workers = dnax.workers_field("the held-out and recalibration images")


class PrefixEvaluator(dnax.Evaluator):
    """Rank every candidate of every block by its distillation error on held-out images.

    The teacher runs once per held-out (and recalibration) batch for all blocks; per block,
    each cell's tree of op choices is walked depth first so candidates sharing their first j
    layers share those layers' forwards and BatchNorm recalibration. By default, as the
    official code, every candidate's BatchNorm is recalibrated on one fixed batch of training
    images and scored on 1,024 held-out images. Scores: mse, nmse (MSE / var of the teacher's
    output) and nmae (mean |s - t| / std(t), the ranking key). Sub-trees are split across
    torchrun ranks. docs/ranking.md explains the choices.
    """

    Config = PrefixConfig

    def rank(self, ctx: dnax.StageContext) -> dnax.RankResult:
        teacher_result = ctx.results.get("teacher")
        train = ctx.results.get("train")
        if teacher_result is None or train is None:
            raise dnax.ArtifactError(f"{ctx.run_dir.root}: the rank stage needs the teacher and "
                                     "train stages' results")
        specs = teacher_result.blocks
        checkpoints = {b.block: b for b in train.blocks}
        for spec in specs:
            if spec.index not in checkpoints:
                raise dnax.ArtifactError(f"{ctx.run_dir.path('stages/train.json')}: no trained "
                                         f"supernet for block {spec.index}")
        space = ctx.plugins.space
        space_hash = space.fingerprint()
        inputs, targets, recal = self._features(ctx, teacher_result, len(specs))
        refs = []
        for spec in specs:
            supernet = load_supernet(ctx, checkpoints[spec.index].path, spec)
            table, shapes = self._score_block(ctx, spec, supernet, inputs[spec.index],
                                              targets[spec.index], recal[spec.index])
            del supernet
            inputs[spec.index] = targets[spec.index] = recal[spec.index] = []
            if ctx.dist.is_main:
                candidates = tuple(space.candidates(spec))
                table = table[_rows_of(candidates, shapes)]
                bad = int((~np.isfinite(table)).any(1).sum())
                if bad:
                    ctx.log(f"block {spec.index}: {bad} candidates scored NaN or inf")
                scores = {m: np.ascontiguousarray(table[:, k]) for k, m in enumerate(METRICS)}
                ref = ctx.save_ranking(
                    dnax.BlockRanking(spec.index, candidates, scores, costs={}),
                    space_hash=space_hash)
            else:  # the same relative paths process 0 writes
                stem = f"rankings/block{spec.index}"
                ref = dnax.RankingRef(spec.index, f"{stem}.safetensors", f"{stem}.json",
                                      sum(math.prod(s) for s in shapes))
            refs.append(ref)
        ctx.dist.barrier()  # every process reads the rankings back right after this stage
        return dnax.RankResult(blocks=tuple(refs), key="nmae")

    # --- steps ----------------------------------------------------------------------------

    def _features(self, ctx: dnax.StageContext, teacher_result: dnax.TeacherResult,
                  num_blocks: int) -> tuple[list[list[torch.Tensor]], ...]:
        """Per block, the teacher's block inputs and outputs of the scoring batches and the block
        inputs of the recalibration batches; one teacher forward per batch, cached on device.

        Scoring: the first ``batches x batch_size`` images (whole batches) of a permutation of
        the heldout split seeded by the pipeline seed; ``separate``: the next
        ``recalib_batches x batch_size`` of it; ``train``: the first ``recalib_batches x
        batch_size`` of a permutation of the train split (no augmentation), same seed."""
        cfg = self.config
        data = ctx.plugins.data
        dataset = data.dataset("heldout", ctx.data_config)
        n = len(dataset)
        if n == 0:
            raise dnax.DataError("$.data: the heldout split has no images")
        # the same seeded subsets in every process: processes split candidates, not images
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
        wanted = cfg.batches * cfg.batch_size
        n_score = _full_batches(min(n, wanted), cfg.batch_size)
        score_idx = order[:n_score]
        recal_set, recal_idx = dataset, []
        if cfg.recalib == "separate":
            recal_idx = order[n_score:n_score + cfg.recalib_batches * cfg.batch_size]
            if not recal_idx:
                raise dnax.DataError(f"$.evaluator.recalib_batches: the heldout split's {n} "
                                     "images are all used for scoring; lower batches")
            recal_idx = recal_idx[:_full_batches(len(recal_idx), cfg.batch_size)]
        elif cfg.recalib == "train":  # one fixed draw of training images, as the official code
            recal_set = data.dataset("train", ctx.data_config, augment=False)
            m = len(recal_set)
            if m == 0:
                raise dnax.DataError("$.evaluator.recalib: the train split has no images to "
                                     "recalibrate BatchNorm on; use 'same' or 'off'")
            train_order = torch.randperm(
                m, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
            recal_idx = train_order[:_full_batches(min(m, cfg.recalib_batches * cfg.batch_size),
                                                   cfg.batch_size)]
        if n_score < wanted:
            ctx.log(f"$.evaluator: the heldout split has {n} images, fewer than batches x "
                    f"batch_size = {wanted}: every candidate is scored on {n_score}")
        model = ctx.plugins.teacher.load(ctx, teacher_result)
        inputs: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        targets: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        recal: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        loaders = [(self._loader(ctx, dataset, score_idx), True)]
        if recal_idx:
            loaders.append((self._loader(ctx, recal_set, recal_idx), False))
        steps, total = 0, sum(len(loader) for loader, _ in loaders)
        for loader, scoring in loaders:
            for images, _ in loader:
                images = images.to(ctx.device, non_blocking=True)
                with torch.no_grad():
                    feats = ctx.plugins.teacher.block_features(model, images)
                if len(feats) != num_blocks + 1:
                    raise dnax.PluginError(f"$.teacher: block_features gave {len(feats)} tensors "
                                           f"for {num_blocks} blocks (expected {num_blocks + 1})")
                for b in range(num_blocks):
                    if scoring:
                        inputs[b].append(feats[b].float())
                        targets[b].append(feats[b + 1].float())
                    else:
                        recal[b].append(feats[b].float())
                steps += 1
                ctx.progress("teacher features", steps, total)
        del model
        return inputs, targets, recal

    def _loader(self, ctx: dnax.StageContext, dataset: torch.utils.data.Dataset,
                indices: list[int]) -> Iterable[tuple[torch.Tensor, Any]]:
        size = self.config.batch_size
        return dnax.batches(dataset, ctx.device, num_workers=self.config.num_workers,
                            batch_sampler=[indices[i:i + size]
                                           for i in range(0, len(indices), size)],
                            local_processes=ctx.dist.local_world_size)

    def _score_block(self, ctx: dnax.StageContext, spec: dnax.BlockSpec,
                     supernet: torch.nn.Module, inputs: list[torch.Tensor],
                     targets: list[torch.Tensor], recal: list[torch.Tensor]
                     ) -> tuple[np.ndarray | None, list[tuple[int, ...]]]:
        """The block's scores (candidates x metrics, walk order; None off process 0) and each
        cell's op counts per layer."""
        cfg = self.config
        groups = make_groups(inputs, targets, recal=cfg.recalib, recal_inputs=recal)
        weights = score_weights(targets, cfg.normalise)
        shapes = [cell_shape(cell) for cell in supernet.cells]
        shards = shard_prefixes(shapes, ctx.dist.process_rank, ctx.dist.world_size, cfg.shard_depth)
        total = sum(math.prod(s) for s in shapes)
        task = f"rank block {spec.index}"
        parts: list[torch.Tensor] = []
        done = 0
        ctx.progress(task, 0, total)
        for cell, prefixes in zip(supernet.cells, shards, strict=True):
            n = math.prod(cell_shape(cell))

            def report(share: float, done: int = done, n: int = n) -> None:
                ctx.progress(task, done + round(share * n), total)

            parts.append(walk_cell(cell, groups, weights, prefixes=prefixes, amp=cfg.amp,
                                   max_batch=cfg.max_batch, progress=report))
            done += n
        scores = torch.cat(parts)
        if ctx.dist.enabled:  # each candidate's row is filled in one process only, zero elsewhere
            import torch.distributed as tdist

            tdist.reduce(scores, dst=0, op=tdist.ReduceOp.SUM)
        return (scores.cpu().numpy() if ctx.dist.is_main else None), shapes


def _full_batches(n: int, batch_size: int) -> int:
    """``n`` rounded down to whole batches (BatchNorm needs > 1 value), or ``n`` when that is
    less than one batch."""
    return n - n % batch_size if n >= batch_size else n


def _rows_of(candidates: Sequence[dnax.Candidate], shapes: Sequence[tuple[int, ...]]
             ) -> np.ndarray:
    """The walk-order row of each candidate (cells in order, product order within a cell)."""
    offsets = np.concatenate(([0], np.cumsum([math.prod(s) for s in shapes])))
    rows = np.empty(len(candidates), dtype=np.int64)
    for k, c in enumerate(candidates):
        shape = shapes[c.cell] if 0 <= c.cell < len(shapes) else None
        if shape is None or len(c.ops) != len(shape) or not all(
                0 <= o < n for o, n in zip(c.ops, shape, strict=True)):
            raise dnax.PluginError(f"$.space: candidate {c.index} of block {c.block} (cell "
                                   f"{c.cell}, ops {list(c.ops)}) is not in its supernet")
        row = 0
        for o, n in zip(c.ops, shape, strict=True):
            row = row * n + o
        rows[k] = offsets[c.cell] + row
    return rows


@dnax.hookimpl
def dnax_register_evaluators(register):
    register("prefix", PrefixEvaluator)
