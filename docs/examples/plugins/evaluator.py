"""An evaluator: every candidate scored on held-out images, one candidate at a time."""

import numpy as np
import torch
import torch.nn.functional as F
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.supernet import load_supernet


@frozen
class PlainLoopConfig:
    images: int = field(default=32, validator=dnax.positive,
                        metadata={"help": "held-out images every candidate is scored on"})


class PlainLoop(dnax.Evaluator):
    """MSE of each candidate's output to the teacher's block output (BatchNorm on the batch's
    statistics, so every path is measured with statistics of its own)."""

    Config = PlainLoopConfig

    @torch.no_grad()
    def rank(self, ctx):
        space, teacher, result = ctx.plugins.space, ctx.plugins.teacher, ctx.results["teacher"]
        images, _ = next(iter(ctx.loader("heldout", self.config.images)))
        feats = teacher.block_features(teacher.load(ctx, result), images.to(ctx.device))
        refs = []
        for block, trained in zip(result.blocks, ctx.results["train"].blocks, strict=True):
            net = load_supernet(ctx, trained.path, block).train()  # checks block and space
            candidates = tuple(space.candidates(block))
            mse = np.empty(len(candidates))
            for k, c in enumerate(candidates):
                mse[k] = F.mse_loss(net(feats[block.index], c.cell, c.ops),
                                    feats[block.index + 1]).item()
                ctx.progress(f"rank block {block.index}", k + 1, len(candidates))
            ranking = dnax.BlockRanking(block.index, candidates, {"mse": mse})
            refs.append(ctx.save_ranking(ranking, space_hash=space.fingerprint()))
        return dnax.RankResult(tuple(refs), key="mse")


@dnax.hookimpl
def dnax_register_evaluators(register):
    register("plain-loop", PlainLoop)
