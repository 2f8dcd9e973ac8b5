"""Block-wise distillation of the block supernets (DNA): one teacher forward per step feeds every
cell of every block, each trained on one sampled path against the teacher's block output."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from attrs import field, frozen
from torch import nn

import dnax
from dnax.plugins.toolkit.supernet import save_supernet
from dnax.plugins.toolkit.training import (
    amp_dtype,
    autocast,
    ddp,
    rng_state,
    seed_everything,
    set_rng_state,
)

RESUME = "supernets/resume.pt"
LOSSES = "supernets/losses.csv"


@frozen
class DistillConfig:
    """Block-wise distillation of every block's supernet from one teacher forward per step."""

    epochs: int = field(default=20, validator=dnax.positive, metadata={
        "help": "passes over the train split"})
    batch_size: int = field(default=64, validator=dnax.positive, metadata={
        "help": "images per step (per process under torchrun)"})
    steps_per_epoch: int | None = field(default=None, validator=dnax.positive, metadata={
        "help": "cap on steps per epoch (default: the whole train split)"})
    lr: tuple[float, ...] = field(default=(), validator=dnax.positive, metadata={
        "help": "per-block learning rates, or one for all; empty: the official 0.002 for the "
                "first and last block, 0.005 between"})
    lr_decay: float = field(default=0.9, validator=dnax.positive, metadata={
        "help": "learning-rate factor per epoch"})
    opt: str = field(default="adam", metadata={"help": "timm optimizer name"})
    opt_eps: float = field(default=1e-8, validator=dnax.positive, metadata={
        "help": "optimizer epsilon"})
    weight_decay: float = field(default=1e-4, validator=dnax.non_negative, metadata={
        "help": "weight decay (not on biases and norm layers)"})
    sampling: Literal["uniform", "fair"] = field(default="uniform", metadata={
        "help": "path per cell and step: uniform at random, or fair (each op once per k steps)"})
    loss: Literal["mse", "nmse"] = field(default="mse", metadata={
        "help": "feature MSE (paper), or MSE per channel over the teacher's variance"})
    amp: Literal["none", "bf16", "fp16"] = field(default="bf16", metadata={
        "help": "mixed precision on CUDA (CPU runs float32)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory on CUDA"})
    augment: bool = field(default=True, metadata={"help": "augment the train images"})
    num_workers: dnax.Workers = dnax.workers_field("the train images")
    checkpoint_every: int = field(default=200, validator=dnax.positive, metadata={
        "help": "steps between resume checkpoints (also at every epoch end)"})
    log_every: int = field(default=10, validator=dnax.positive, metadata={
        "help": "steps between progress reports and loss checks"})


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and runs)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def block_lrs(lr: Sequence[float], n: int) -> list[float]:
    """The learning rate of each of ``n`` blocks (see :attr:`DistillConfig.lr`)."""
    if not lr:
        return [0.002] if n == 1 else [0.002, *[0.005] * (n - 2), 0.002]
    if len(lr) == 1:
        return list(lr) * n
    if len(lr) != n:
        raise dnax.ConfigError(f"$.trainer.lr: {len(lr)} values for {n} blocks (give one, or one "
                               "per block)")
    return list(lr)


class PathSampler:
    """The op of every layer of every cell for a step, a pure function of (seed, epoch, step):
    the same in every process and after a resume. ``fair``: within each run of k steps (k = ops of
    the layer) every op of a layer is used once."""

    def __init__(self, cells: Sequence[Sequence[dnax.CellSpec]], mode: str, seed: int):
        self.cells, self.mode, self.seed = cells, mode, seed

    def __call__(self, epoch: int, step: int) -> list[list[tuple[int, ...]]]:
        out = []
        for b, cells in enumerate(self.cells):
            paths = []
            for c, cell in enumerate(cells):
                k = len(cell.ops)
                if self.mode == "fair":
                    g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, b, c, step // k))
                    perms = torch.rand(cell.depth, k, generator=g).argsort(dim=1)
                    ops = perms[:, step % k]
                else:
                    g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, b, c, step))
                    ops = torch.randint(k, (cell.depth,), generator=g)
                paths.append(tuple(int(o) for o in ops))
            out.append(paths)
        return out


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``: mean squared error; ``nmse``: per-channel MSE over the teacher's variance."""
    student, teacher = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    dims = (0, 2, 3)
    var = teacher.var(dim=dims, unbiased=False).clamp_min(1e-6)
    return ((student - teacher).pow(2).mean(dim=dims) / var).mean()


class CellsForward(nn.Module):
    """Runs one path through every cell of a supernet (one module call, so DDP sees one
    forward per step)."""

    def __init__(self, supernet: nn.Module):
        super().__init__()
        self.supernet = supernet

    def forward(self, x: torch.Tensor, paths: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return [self.supernet(x, c, ops) for c, ops in enumerate(paths)]


class DistillStep:
    """The supernets, optimizers and schedulers of every block, and one training step of all
    of them from one teacher forward."""

    def __init__(self, teacher: dnax.Teacher, model: nn.Module, space: dnax.SearchSpace,
                 blocks: Sequence[dnax.BlockSpec], config: DistillConfig, *, device: str = "cpu",
                 seed: int = 0, dist: dnax.DistInfo | None = None):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        self.teacher, self.model, self.blocks, self.config = teacher, model, blocks, config
        self.device = device
        cuda = device.startswith("cuda")
        self.amp = amp_dtype(device, config.amp)
        self.memory = torch.channels_last if cuda and config.channels_last else None
        self.cells = [tuple(space.cells(b)) for b in blocks]
        self.supernets: list[nn.Module] = []
        for b in blocks:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mix_seed(seed, "init", b.index))
                net = space.build_supernet(b)
            net.to(device)
            if self.memory is not None:
                net.to(memory_format=self.memory)
            self.supernets.append(net)
        if self.memory is not None:
            model.to(memory_format=self.memory)
        self.runners: list[nn.Module] = [CellsForward(n) for n in self.supernets]
        if dist is not None:
            self.runners = [ddp(r, device, dist, find_unused_parameters=True)
                            for r in self.runners]
        lrs = block_lrs(config.lr, len(blocks))
        self.optimizers = [create_optimizer_v2(n, opt=config.opt, lr=lr, eps=config.opt_eps,
                                               weight_decay=config.weight_decay)
                           for n, lr in zip(self.supernets, lrs, strict=True)]
        self.schedulers = [create_scheduler_v2(o, sched="step", num_epochs=config.epochs,
                                               decay_epochs=1, decay_rate=config.lr_decay)[0]
                           for o in self.optimizers]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp is torch.float16 else None

    def _autocast(self) -> Any:
        return autocast(self.device, self.amp)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's block inputs/outputs for ``images`` (one forward, no grad)."""
        images = images.to(self.device, non_blocking=True)
        if self.memory is not None:
            images = images.contiguous(memory_format=self.memory)
        with torch.no_grad(), self._autocast():
            return [f.detach() for f in self.teacher.block_features(self.model, images)]

    def losses(self, feats: Sequence[torch.Tensor], paths: Sequence[Sequence[Sequence[int]]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum to back-propagate, per-cell losses of every block flattened)."""
        cell_losses = []
        for i, runner in enumerate(self.runners):
            with self._autocast():
                outs = runner(feats[i], paths[i])
            cell_losses += [feature_loss(o, feats[i + 1], self.config.loss) for o in outs]
        stacked = torch.stack(cell_losses)
        return stacked.sum(), stacked.detach()

    def __call__(self, images: torch.Tensor, paths: Sequence[Sequence[Sequence[int]]]
                 ) -> torch.Tensor:
        """One step of every cell of every block; returns the per-cell losses (on device)."""
        feats = self.features(images)
        total, cell_losses = self.losses(feats, paths)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            total.backward()
            for opt in self.optimizers:
                opt.step()
        return cell_losses

    def state(self) -> dict[str, Any]:
        return {"supernets": [n.state_dict() for n in self.supernets],
                "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load(self, state: dict[str, Any]) -> None:
        for items, key in ((self.supernets, "supernets"), (self.optimizers, "optimizers"),
                           (self.schedulers, "schedulers")):
            for obj, sd in zip(items, state[key], strict=True):
                obj.load_state_dict(sd)
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def epoch_batches(n: int, batch: int, *, seed: int, epoch: int, process_rank: int = 0,
                  world: int = 1, cap: int | None = None) -> list[list[int]]:
    """The index batches of this process for ``epoch``: a seeded permutation, last partial batch
    dropped, so a resumed epoch can skip exactly the batches already done."""
    g = torch.Generator().manual_seed(mix_seed(seed, "data", epoch))
    perm = torch.randperm(n, generator=g).tolist()
    per = batch * world
    steps = n // per if cap is None else min(n // per, cap)
    start = process_rank * batch
    return [perm[s * per + start: s * per + start + batch] for s in range(steps)]


class Distill(dnax.BlockTrainer):
    """Block-wise distillation (DNA): each step runs the teacher once and trains every cell of
    every block on one sampled path; resumable at any step from supernets/resume.pt.

    Block i's student input is the teacher's feature i, its target feature i+1. Per-block Adam
    (timm's create_optimizer_v2) with a step schedule (create_scheduler_v2)."""

    Config = DistillConfig

    @classmethod
    def check(cls, config: DistillConfig, pipeline: Any, registry: Any) -> list[str]:
        from timm.optim import list_optimizers

        if config.opt.lower() not in list_optimizers():
            return [f"opt: timm has no optimizer '{config.opt}'"]
        return []

    def train(self, ctx: dnax.StageContext) -> dnax.TrainResult:
        cfg = self.config
        space, teacher = ctx.plugins.space, ctx.plugins.teacher
        tres: dnax.TeacherResult = ctx.results["teacher"]
        blocks = tuple(tres.blocks)
        if hasattr(space, "check_blocks"):
            space.check_blocks(blocks)
        model = teacher.load(ctx, tres).eval()  # never BN batch statistics in the teacher
        step = DistillStep(teacher, model, space, blocks, cfg, device=ctx.device, seed=ctx.seed,
                           dist=ctx.dist)
        sampler = PathSampler(step.cells, cfg.sampling, ctx.seed)
        dataset = ctx.plugins.data.dataset("train", tres.data_config, augment=cfg.augment)
        n = len(dataset)
        world = ctx.dist.world_size
        if n // (cfg.batch_size * world) == 0:
            raise dnax.DataError(f"$.trainer.batch_size: the train split has {n} images, fewer "
                                 f"than one step of {cfg.batch_size} x {world} processes")
        columns = [f"block{b.index}.cell{c.index}" for b, cells in zip(blocks, step.cells,
                                                                       strict=True)
                   for c in cells]
        space_hash = space.fingerprint()
        blocks_json = json.dumps([attrs.asdict(b) for b in blocks])

        epoch, start, gstep, rows, last = 0, 0, 0, [], [float("nan")] * len(columns)
        seed_everything(mix_seed(ctx.seed, "train"))  # augmentation: not what ran before
        state = ctx.run_dir.load_state(RESUME)
        if state is not None:
            if state.get("space_hash") != space_hash or state.get("blocks") != blocks_json:
                raise dnax.ArtifactError(f"{ctx.run_dir.path(RESUME)}: made for another space "
                                         "or teacher (re-run the stage with --force)")
            step.load(state)
            set_rng_state(state["rng"])
            epoch, start, gstep = state["epoch"], state["step"], state["global_step"]
            rows, last = state["losses"], state["epoch_losses"]
            ctx.log(f"distill: resuming after {epoch} epochs and {start} steps")

        def save(epoch: int, in_epoch: int, sums: list[float], count: int) -> None:
            if ctx.dist.is_main:
                ctx.run_dir.save_state(RESUME, {
                    **step.state(), "rng": rng_state(), "space_hash": space_hash,
                    "blocks": blocks_json, "epoch": epoch, "step": in_epoch,
                    "global_step": gstep, "losses": rows, "epoch_losses": last,
                    "sums": sums, "count": count})
                _write_csv(ctx.run_dir, ["epoch", "step", *columns], rows)
            ctx.dist.barrier()

        sums, count = [0.0] * len(columns), 0
        if state is not None and start > 0:
            sums, count = state["sums"], state["count"]
        wrote = False
        while epoch < cfg.epochs:
            batches = epoch_batches(n, cfg.batch_size, seed=ctx.seed, epoch=epoch,
                                    process_rank=ctx.dist.process_rank, world=world,
                                    cap=cfg.steps_per_epoch)
            if start >= len(batches):
                raise dnax.ArtifactError(f"{ctx.run_dir.path(RESUME)}: resumes at step {start} "
                                         f"of an epoch of {len(batches)} steps")
            loader = dnax.batches(
                dataset, ctx.device, batch_sampler=batches[start:], num_workers=cfg.num_workers,
                generator=torch.Generator().manual_seed(mix_seed(ctx.seed, "load", epoch, start)),
                local_processes=ctx.dist.local_world_size)
            pending: list[torch.Tensor] = []
            for s, (images, _) in enumerate(loader, start=start):
                pending.append(step(images, sampler(epoch, s)))
                gstep += 1
                done = s + 1
                at_end = done == len(batches)
                if done % cfg.log_every and done % cfg.checkpoint_every and not at_end:
                    continue
                window = torch.stack(pending).float()
                if ctx.dist.enabled:  # every process sees (and stops on) the same mean losses
                    torch.distributed.all_reduce(window)
                    window /= world
                window = window.cpu()
                _check_finite(window, columns, epoch, done - len(pending), ctx)
                pending = []
                mean = window.mean(0).tolist()
                sums = [a + float(b) for a, b in zip(sums, window.sum(0).tolist(), strict=True)]
                count += len(window)
                rows.append([epoch + 1, gstep, *mean])
                if at_end:
                    last = [v / count for v in sums]
                    for sch in step.schedulers:
                        sch.step(epoch + 1)
                    epoch, start, sums, count = epoch + 1, 0, [0.0] * len(columns), 0
                    save(epoch, 0, sums, count)
                    self._write_blocks(ctx, step, blocks, space_hash, epoch, gstep)
                    wrote = True
                    if ctx.dist.is_main:
                        self._report(ctx, blocks, step.cells, last, epoch, cfg.epochs)
                elif done % cfg.checkpoint_every == 0:
                    save(epoch, done, sums, count)
                ctx.progress(f"epoch {epoch + (0 if at_end else 1)}/{cfg.epochs}", done,
                             len(batches), **_block_losses(blocks, step.cells, mean))
        if not wrote:  # resumed after the last epoch's checkpoint
            if ctx.dist.is_main:  # a kill may have come between resume.pt and losses.csv
                _write_csv(ctx.run_dir, ["epoch", "step", *columns], rows)
            self._write_blocks(ctx, step, blocks, space_hash, epoch, gstep)
        per_block = _block_losses(blocks, step.cells, last)
        return dnax.TrainResult(tuple(
            dnax.BlockCheckpoint(b.index, _block_path(b), cfg.epochs, gstep,
                                 per_block[f"block{b.index}"]) for b in blocks))

    def _write_blocks(self, ctx: dnax.StageContext, step: DistillStep,
                      blocks: Sequence[dnax.BlockSpec], space_hash: str, epoch: int,
                      gstep: int) -> None:
        if ctx.dist.is_main:
            for b, net in zip(blocks, step.supernets, strict=True):
                save_supernet(ctx.run_dir, _block_path(b), net, b, space_hash,
                              epoch=str(epoch), step=str(gstep))
        ctx.dist.barrier()

    def _report(self, ctx: dnax.StageContext, blocks: Sequence[dnax.BlockSpec],
                cells: Sequence[Sequence[dnax.CellSpec]], losses: list[float], epoch: int,
                epochs: int) -> None:
        i = 0
        for b, bcells in zip(blocks, cells, strict=True):
            vals = losses[i: i + len(bcells)]
            i += len(bcells)
            ctx.hook.dnax_block_trained(
                block=b, epoch=epoch, final=epoch == epochs,
                losses={"loss": float(np.mean(vals)),
                        **{f"cell{c.index}": v for c, v in zip(bcells, vals, strict=True)}})


def _block_path(b: dnax.BlockSpec) -> str:
    return f"supernets/block{b.index}.safetensors"


def _block_losses(blocks: Sequence[dnax.BlockSpec], cells: Sequence[Sequence[dnax.CellSpec]],
                  values: Sequence[float]) -> dict[str, float]:
    out, i = {}, 0
    for b, bcells in zip(blocks, cells, strict=True):
        out[f"block{b.index}"] = float(np.mean(values[i: i + len(bcells)]))
        i += len(bcells)
    return out


def _check_finite(window: torch.Tensor, columns: Sequence[str], epoch: int, first: int,
                  ctx: dnax.StageContext) -> None:
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise dnax.DivergenceError(
            f"{columns[col]}: loss is {window[row, col].item()} at epoch {epoch + 1} step "
            f"{first + row + 1}; the last good checkpoint is kept ({ctx.run_dir.path(RESUME)})")


def _write_csv(run_dir: dnax.RunDir, header: list[str], rows: list[list[float]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    with dnax.atomic_write(run_dir.path(LOSSES), "w") as f:
        f.write(buf.getvalue())


@dnax.hookimpl
def dnax_register_trainers(register):
    register("distill", Distill)
