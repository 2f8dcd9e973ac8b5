"""The ``spos`` step, the one-shot baseline (-> spos.csv): one supernet for the whole network
(SPOSNet: the same stem, fixed stage and head, one shared stack of layers per block), trained
with one uniform random path per step and cross-entropy; each architecture's path scored after
BatchNorm recalibration."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import dnax

from .common import (
    LABEL_SMOOTHING,
    LR,
    WARMUP,
    WEIGHT_DECAY,
    Experiment,
    read_csv,
    read_json,
    say,
    write_csv,
)
from .search import configured, context, space_blocks

# --- step: spos -------------------------------------------------------------------------------

SubnetPath = Sequence[tuple[int, Sequence[int]]]  # per block: (cell, op per layer)


class SPOSNet(nn.Module):
    """SPOS's whole-network supernet: the searched network's stem, fixed stage(s) and head around
    one shared stack of layers per block, as SPOS shares weights: a cell of depth d runs the
    first d layers of the block's deepest cell (the other layers are skipped), each layer with
    its chosen op. (Separate weights per cell, as DNA's block supernets have them, leave the next
    block a different, unrelated input for every cell: such a supernet barely learns.)"""

    def __init__(self, space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec],
                 num_classes: int) -> None:
        from dnax.plugins.retrainers.export import build_model

        super().__init__()
        first = [space.candidates(b)[0] for b in blocks]
        net = build_model(space.arch_def(blocks, first), num_classes, space.model_kwargs())
        net.blocks = net.blocks[: len(net.blocks) - len(blocks)]  # the fixed stage(s)
        self.net = net
        stacks = []
        for b in blocks:
            cells = space.cells(b)
            if len({c.out_chs for c in cells}) > 1:
                raise SystemExit(f"spos: block {b.index} has cells of different widths, which "
                                 "one stack of layers cannot share")
            deepest = max(cells, key=lambda c: c.depth).index
            stacks.append(space.build_supernet(b).cells[deepest])
        self.stacks = nn.ModuleList(stacks)

    def forward(self, x: torch.Tensor, path: SubnetPath) -> torch.Tensor:
        net = self.net
        x = net.blocks(net.bn1(net.conv_stem(x)))
        for stack, (_, ops) in zip(self.stacks, path, strict=True):
            x = stack.enter(x)
            for layer, o in zip(stack.layers, ops, strict=False):  # the first len(ops) layers
                x = layer[o](x)
            x = stack.exit(x)
        return net.forward_head(net.bn2(net.conv_head(x)))


def sample_path(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec],
                g: torch.Generator) -> list[tuple[int, tuple[int, ...]]]:
    """SPOS's uniform single path: per block a random cell, then a random op per layer."""
    path = []
    for b in blocks:
        cells = space.cells(b)
        c = int(torch.randint(len(cells), (1,), generator=g))
        ops = torch.randint(len(cells[c].ops), (cells[c].depth,), generator=g)
        path.append((c, tuple(int(o) for o in ops)))
    return path


@torch.no_grad()
def recalibrated_top1(model: SPOSNet, path: SubnetPath, recal: Sequence[torch.Tensor], val: Any,
                      device: str) -> float:
    """Val top-1 (%) of one path after resetting BatchNorm and re-estimating it (cumulative
    average) on ``recal`` batches."""
    for bn in model.modules():
        if isinstance(bn, _BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    for x in recal:
        model(x.to(device), path)
    model.eval()
    hits = total = 0
    for x, y in val:
        hits += int((model(x.to(device), path).argmax(-1) == y.to(device)).sum())
        total += len(y)
    return 100.0 * hits / max(total, 1)


SPOS = ("id", "top1", "recal_batches", "images")
SPOS_STATE, SPOS_WEIGHTS = "resume.pt", "supernet.safetensors"


def train_spos(exp: Experiment, ctx: dnax.StageContext, model: SPOSNet,
               blocks: Sequence[dnax.BlockSpec]) -> bool:
    """Cross-entropy, one uniform path per step, the stand-alone recipe's optimizer, schedule
    and augmentation; resumable per epoch. False when the deadline stopped it."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    s, rd, device, space = exp.scale, ctx.run_dir, ctx.device, ctx.plugins.space
    train = ctx.loader("train", s.batch_size, shuffle=True, augment=True, drop_last=True)
    steps = len(train)
    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=s.spos_epochs,
                                   warmup_epochs=WARMUP, warmup_lr=LR * 1e-3, min_lr=LR * 1e-3,
                                   step_on_epochs=False, updates_per_epoch=steps)
    start, seconds = 0, 0.0
    state = rd.load_state(SPOS_STATE)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, seconds = state["epoch"], state["seconds"]
        say("spos", f"resuming after epoch {start}/{s.spos_epochs}")
    for epoch in range(start, s.spos_epochs):
        if not exp.time_left(seconds / max(epoch, 1) if epoch else 0.0):
            say("spos", f"deadline: {epoch} of {s.spos_epochs} epochs trained")
            return False
        t0 = time.perf_counter()
        seed = exp.seed * 100_003 + epoch  # paths, order, augmentation: the same after a resume
        torch.manual_seed(seed)
        train.generator.manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        model.train()
        total, hits, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(train):
            x, y = x.to(device), y.to(device)
            logits = model(x, sample_path(space, blocks, g))
            loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + i + 1)
            total += loss.item()
            hits += int((logits.argmax(-1) == y).sum())
            seen += len(y)
        sched.step(epoch + 1)
        if not np.isfinite(total):
            raise SystemExit(f"spos: loss is {total} in epoch {epoch + 1}")
        seconds += time.perf_counter() - t0
        rd.save_state(SPOS_STATE, {"epoch": epoch + 1, "seconds": seconds,
                                   "model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
        say("spos", f"epoch {epoch + 1}/{s.spos_epochs}: loss {total / steps:.4f}, train "
                    f"top-1 of the sampled paths {100 * hits / max(seen, 1):.1f} % "
                    f"({time.perf_counter() - t0:.0f} s)")
    rd.save_tensors(SPOS_WEIGHTS, model.state_dict(), kind="spos-supernet",
                    metadata={"epochs": str(s.spos_epochs), "seconds": f"{seconds:.1f}"})
    rd.path(SPOS_STATE).unlink(missing_ok=True)
    return True


def step_spos(exp: Experiment, state: dict[str, Any]) -> None:
    config, plugins = configured(exp)
    blocks = space_blocks(plugins)
    ctx = context("spos", config, plugins, exp.root / "spos")
    torch.manual_seed(exp.seed)
    model = SPOSNet(plugins.space, blocks, plugins.data.num_classes).to(ctx.device)
    if not ctx.run_dir.exists(SPOS_WEIGHTS) and not train_spos(exp, ctx, model, blocks):
        state["cut"] = True
        return
    weights, _ = ctx.run_dir.load_tensors(SPOS_WEIGHTS, kind="spos-supernet")
    spec = read_json(exp.files["archs.json"])
    rows = read_csv(exp.files["spos.csv"])
    done = {int(r["id"]) for r in rows}
    loader = ctx.loader("train", exp.scale.batch_size, shuffle=True)
    recal = [x for _, (x, _) in zip(range(exp.scale.recal_batches), loader, strict=False)]
    val = ctx.loader(exp.scale.spos_split, 256)  # PROTOCOL.md: held-out, never the truth's
    for arch in spec["archs"]:
        if arch["id"] in done:
            continue
        model.load_state_dict(weights)
        path = list(zip(arch["cells"], arch["ops"], strict=True))
        top1 = recalibrated_top1(model, path, recal, val, ctx.device)
        rows.append({"id": arch["id"], "top1": f"{top1:.4f}", "recal_batches": len(recal),
                     "images": exp.scale.spos_split})
        write_csv(exp.files["spos.csv"], rows, SPOS)
        say("spos", f"arch {len(rows)}/{len(spec['archs'])} (id {arch['id']}): "
                    f"top-1 {top1:.2f} %")
