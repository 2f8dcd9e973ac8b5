"""The ``blocks`` step, DNA's premise tested per block (-> blocks.csv): candidates spread over
the block's cells, each cell trained alone against the teacher's cached features (MSE), then
scored like the supernet scores it (nmae on the same held-out images)."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dnax

from .common import Experiment, read_csv, say, write_csv
from .search import configured, context

# --- step: blocks -----------------------------------------------------------------------------

BLOCKS = ("block", "candidate", "cell", "depth", "ops", "nmae", "mse", "train_mse", "epochs",
          "images", "seconds")


def block_picks(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec], n: int,
                seed: int) -> list[tuple[int, int]]:
    """``n`` distinct candidates per block (all of them when it has fewer), spread as evenly
    over its cells as their sizes allow (ops uniform), listed round-robin over blocks and cells
    so a prefix is balanced too."""
    rng = np.random.default_rng([seed, 24])
    per_block = []
    for b in blocks:
        by_cell: dict[int, list[int]] = {}
        for i, c in enumerate(space.candidates(b)):
            by_cell.setdefault(c.cell, []).append(i)
        cells = sorted(by_cell, key=lambda c: len(by_cell[c]))
        quota, left = {}, n
        for k, c in enumerate(cells):  # smallest cells first: what they lack goes to the rest
            quota[c] = min(len(by_cell[c]), -(-left // (len(cells) - k)))
            left -= quota[c]
        drawn = [list(rng.permutation(by_cell[c])[:quota[c]]) for c in sorted(by_cell)]
        per_block.append([int(i) for i in itertools.chain.from_iterable(
            itertools.zip_longest(*drawn)) if i is not None])
    return [(b.index, i) for row in itertools.zip_longest(*per_block) for b, i in
            zip(blocks, row, strict=True) if i is not None]


def scoring_images(ctx: dnax.StageContext, batches: int, batch_size: int) -> list[int]:
    """The held-out images the prefix evaluator scores every candidate on (same permutation)."""
    n = len(ctx.plugins.data.dataset("heldout", ctx.data_config))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    return order[:min(n, batches * batch_size) // batch_size * batch_size or n]


@torch.no_grad()
def teacher_features(ctx: dnax.StageContext, teacher: nn.Module, split: str,
                     indices: Sequence[int]) -> list[torch.Tensor]:
    """Per block the teacher's input, then the last block's output (len = blocks + 1)."""
    dataset = ctx.plugins.data.dataset(split, ctx.data_config)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)),
                                         batch_size=256)
    parts: list[list[torch.Tensor]] = []
    for images, _ in loader:
        feats = ctx.plugins.teacher.block_features(teacher, images.to(ctx.device))
        parts = parts or [[] for _ in feats]
        for k, f in enumerate(feats):
            parts[k].append(f.float())
    return [torch.cat(p) for p in parts]


def nmae(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean absolute error over the teacher output's standard deviation (whole tensor)."""
    return float((student - teacher).abs().mean() / teacher.std())


def train_block(cell: nn.Module, ops: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                epochs: int, batch_size: int, lr: float, trainer: Any, seed: int) -> float:
    """Train one candidate alone (MSE to the teacher's block output; Adam with the distill
    trainer's eps and weight decay, here on every parameter; lr x its decay per epoch); the
    last epoch's mean train MSE."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in cell.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, eps=trainer.opt_eps, weight_decay=trainer.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, trainer.lr_decay)
    cell.train()
    last = math.nan
    for _ in range(epochs):
        total, steps = 0.0, 0
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) < 2:
                continue
            loss = F.mse_loss(cell(x[idx], ops), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        sched.step()
        last = total / max(steps, 1)
    return last


def step_blocks(exp: Experiment, state: dict[str, Any]) -> None:
    from dnax.plugins.trainers.distill import block_lrs

    run = dnax.load_run(exp.run_dir)
    config, plugins = configured(exp)
    ctx = context("blocks", config, plugins, exp.run_dir)  # the teacher's weights are there
    space, blocks = plugins.space, run.results["teacher"].blocks
    trainer = config.section("trainer").config
    lrs = block_lrs(trainer.lr, len(blocks))
    teacher = plugins.teacher.load(ctx, run.results["teacher"])
    s = exp.scale
    train_idx = np.random.default_rng([exp.seed, 32]).permutation(
        len(plugins.data.dataset("train", ctx.data_config)))[:s.block_images]
    train = teacher_features(ctx, teacher, "train", train_idx.tolist())
    score = teacher_features(ctx, teacher, "heldout",
                             scoring_images(ctx, s.rank_batches, s.rank_batch))
    del teacher
    rows = read_csv(exp.files["blocks.csv"])
    done = {(int(r["block"]), int(r["candidate"])) for r in rows}
    picks = block_picks(space, blocks, s.block_candidates, exp.seed)
    for k, (b, i) in enumerate(picks):
        if (b, i) in done:
            continue
        took = [float(r["seconds"]) for r in rows if int(r["block"]) == b]
        if not exp.time_left(float(np.median(took)) if took else 0.0):
            state["cut"] = True
            say("blocks", f"deadline: {len(rows)} of {len(picks)} candidates trained")
            return
        t0 = time.perf_counter()
        spec = blocks[b]
        cand = space.candidates(spec)[i]
        torch.manual_seed(exp.seed * 1_000 + k)
        cell = space.build_supernet(spec).cells[cand.cell].to(ctx.device)
        train_mse = train_block(cell, cand.ops, train[b], train[b + 1], s.block_epochs,
                                s.batch_size, lrs[b], trainer, exp.seed * 1_000 + k)
        cell.eval()
        with torch.no_grad():
            out = torch.cat([cell(x, cand.ops) for x in score[b].split(256)])
        row = {"block": b, "candidate": i, "cell": cand.cell, "depth": len(cand.ops),
               "ops": " ".join(map(str, cand.ops)), "nmae": f"{nmae(out, score[b + 1]):.6g}",
               "mse": f"{float(F.mse_loss(out, score[b + 1])):.6g}",
               "train_mse": f"{train_mse:.6g}", "epochs": s.block_epochs, "images": len(train[b]),
               "seconds": f"{time.perf_counter() - t0:.1f}"}
        rows.append(row)
        write_csv(exp.files["blocks.csv"], rows, BLOCKS)
        say("blocks", f"{len(rows)}/{len(picks)}: block {b} candidate {i} (depth "
                      f"{len(cand.ops)}): nmae {row['nmae']} ({row['seconds']} s)")
