"""The ``prefix`` evaluator: every candidate of every block scored on held-out images, with the
computation (and BatchNorm recalibration) of shared op prefixes done once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.supernet import load_supernet

from .tree import METRICS, cell_shape, make_groups, score_weights, shard_prefixes, walk_cell


@frozen
class PrefixConfig:
    """Scores every candidate on held-out images with a prefix-shared tree walk."""

    batches: int = field(default=2, validator=dnax.positive, metadata={
        "help": "held-out batches every candidate is scored on (the official code: 20 on GPU)"})
    batch_size: int = field(default=32, validator=dnax.positive, metadata={
        "help": "images per held-out batch"})
    recalib: Literal["same", "separate", "off"] = field(default="same", metadata={
        "help": "BatchNorm recalibration per prefix: 'same' on each scoring batch (official "
                "code), 'separate' on recalib_batches other held-out batches, 'off' none"})
    recalib_batches: int = field(default=1, validator=dnax.positive, metadata={
        "help": "held-out batches that recalibrate BatchNorm when recalib = 'separate'"})
    normalise: Literal["channel", "global"] = field(default="channel", metadata={
        "help": "nmse/nmae divide by the teacher output's variance/std per channel or overall"})
    shard_depth: int = field(default=2, validator=dnax.positive, metadata={
        "help": "under torchrun, sub-trees under op prefixes of this many layers go to ranks"})
    amp: bool = field(default=True, metadata={"help": "autocast (bfloat16/float16) on CUDA"})
    num_workers: int = field(default=0, validator=dnax.non_negative, metadata={
        "help": "DataLoader worker processes for the held-out images"})


class PrefixEvaluator(dnax.Evaluator):
    """Rank every candidate of every block by its distillation error on held-out images.

    The teacher runs once per held-out batch for all blocks; per block, each cell's tree of op
    choices is walked depth first so candidates sharing their first j layers share those layers'
    forwards and BatchNorm recalibration. Scores: mse, nmse (MSE / var of the teacher's output)
    and nmae (mean |s - t| / std, the ranking key). Sub-trees are split across torchrun ranks.
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
                ref = ctx.run_dir.save_ranking(
                    dnax.BlockRanking(spec.index, candidates, scores, costs={}),
                    space_hash=space_hash)
            else:  # the same relative paths rank 0 writes
                stem = f"rankings/block{spec.index}"
                ref = dnax.RankingRef(spec.index, f"{stem}.safetensors", f"{stem}.json",
                                      sum(math.prod(s) for s in shapes))
            refs.append(ref)
        ctx.dist.barrier()  # every rank reads the rankings back right after this stage
        return dnax.RankResult(blocks=tuple(refs), key="nmae")

    # --- steps ----------------------------------------------------------------------------

    def _features(self, ctx: dnax.StageContext, teacher_result: dnax.TeacherResult,
                  num_blocks: int) -> tuple[list[list[torch.Tensor]], ...]:
        """Per block, the teacher's block inputs and outputs of the scoring batches and the block
        inputs of the recalibration batches; one teacher forward per batch, cached on device."""
        cfg = self.config
        dataset = ctx.plugins.data.dataset("heldout", ctx.data_config)
        n = len(dataset)
        if n == 0:
            raise dnax.DataError("$.data: the heldout split has no images")
        # the same seeded subset on every rank: ranks split candidates, not images
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
        n_score = min(n, cfg.batches * cfg.batch_size)
        if n_score >= cfg.batch_size:
            n_score -= n_score % cfg.batch_size  # full batches only: BN needs > 1 value
        score_idx = order[:n_score]
        recal_idx: list[int] = []
        if cfg.recalib == "separate":
            recal_idx = order[n_score:n_score + cfg.recalib_batches * cfg.batch_size]
            if not recal_idx:
                raise dnax.DataError(f"$.evaluator.recalib_batches: the heldout split's {n} "
                                     "images are all used for scoring; lower batches")
        if n_score < cfg.batches * cfg.batch_size:
            ctx.log(f"heldout split has {n} images: scoring on {n_score}")
        model = ctx.plugins.teacher.load(ctx, teacher_result)
        inputs: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        targets: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        recal: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, score_idx + recal_idx), batch_size=cfg.batch_size,
            num_workers=cfg.num_workers, pin_memory=ctx.device.startswith("cuda"))
        n_scoring = math.ceil(n_score / cfg.batch_size)
        for k, (images, _) in enumerate(loader):
            scoring = k < n_scoring
            images = images.to(ctx.device, non_blocking=True)
            with torch.no_grad():
                feats = ctx.plugins.teacher.block_features(model, images)
            if len(feats) != num_blocks + 1:
                raise dnax.PluginError(f"$.teacher: block_features gave {len(feats)} tensors for "
                                       f"{num_blocks} blocks (expected {num_blocks + 1})")
            for b in range(num_blocks):
                if scoring:
                    inputs[b].append(feats[b].float())
                    targets[b].append(feats[b + 1].float())
                else:
                    recal[b].append(feats[b].float())
            ctx.progress("teacher features", k + 1, len(loader))
        del model
        return inputs, targets, recal

    def _score_block(self, ctx: dnax.StageContext, spec: dnax.BlockSpec,
                     supernet: torch.nn.Module, inputs: list[torch.Tensor],
                     targets: list[torch.Tensor], recal: list[torch.Tensor]
                     ) -> tuple[np.ndarray | None, list[tuple[int, ...]]]:
        """The block's scores (candidates x metrics, walk order; None off rank 0) and each
        cell's op counts per layer."""
        cfg = self.config
        groups = make_groups(inputs, targets, recal=cfg.recalib, recal_inputs=recal)
        weights = score_weights(targets, cfg.normalise)
        shapes = [cell_shape(cell) for cell in supernet.cells]
        shards = shard_prefixes(shapes, ctx.dist.rank, ctx.dist.world_size, cfg.shard_depth)
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
                                   progress=report))
            done += n
        scores = torch.cat(parts)
        if ctx.dist.enabled:  # each candidate's row is filled on one rank only, zero elsewhere
            import torch.distributed as tdist

            tdist.reduce(scores, dst=0, op=tdist.ReduceOp.SUM)
        return (scores.cpu().numpy() if ctx.dist.is_main else None), shapes


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
