"""Training machinery the plugins share: autocast, loss scaling with clipping, top-k evaluation,
FLOP counting, RNG snapshots, DDP wrapping, and :class:`EpochLoop`, one resumable training loop.

The teacher's training and the retrainer run :class:`EpochLoop`; the distill trainer, which
trains every block from one teacher forward, uses the pieces (autocast, scaler, RNG snapshots).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

import dnax

# --- precision ---------------------------------------------------------------------------------


def amp_dtype(device: torch.device | str, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: None off CUDA or when off; ``True`` picks
    bfloat16 where the GPU has it, else float16; ``"bf16"``/``"fp16"``/``"none"`` name one."""
    if torch.device(device).type != "cuda" or amp in (False, "none"):
        return None
    if amp is True:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[str(amp)]


def autocast(device: torch.device | str, dtype: torch.dtype | None
             ) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class Backward:
    """Backward and optimizer step: loss scaling for float16 (timm's ``NativeScaler``) and
    gradient clipping (``clip_grad``, timm's ``dispatch_clip_grad``)."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype | None,
                 clip_grad: float | None = None):
        from timm.utils import NativeScaler

        self.scaler = None
        if dtype is torch.float16:
            try:
                self.scaler = NativeScaler(torch.device(device).type)
            except TypeError:  # timm before 1.0.10 has no device argument
                self.scaler = NativeScaler()
        self.clip_grad = clip_grad

    def __call__(self, loss: torch.Tensor, optimizer: Any,
                 parameters: Callable[[], Iterable[nn.Parameter]]) -> None:
        """Zero the grads, back-propagate ``loss``, clip, and step ``optimizer``."""
        from timm.utils import dispatch_clip_grad

        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler(loss, optimizer, clip_grad=self.clip_grad, parameters=list(parameters()))
            return
        loss.backward()
        if self.clip_grad is not None:
            dispatch_clip_grad(list(parameters()), self.clip_grad)
        optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


# --- measuring ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device | str,
             dtype: torch.dtype | None = None, dist: dnax.DistInfo | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (timm's ``accuracy``) and mean cross-entropy of
    ``model`` over ``loader``, summed over ranks; a DataError when there is nothing to score."""
    import torch.nn.functional as F
    from timm.utils import accuracy

    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, count
    total = len(loader) if hasattr(loader, "__len__") else 0
    for i, (images, labels) in enumerate(loader, 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images).float()
        top1, top5 = accuracy(logits, labels, topk=(1, 5))
        n = len(labels)
        sums += torch.stack([torch.round(top1.double() * n / 100),
                             torch.round(top5.double() * n / 100),
                             F.cross_entropy(logits, labels, reduction="sum").double(),
                             torch.tensor(float(n), dtype=torch.float64, device=device)])
        if progress is not None:
            progress(i, total)
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    top1, top5, loss, n = sums.tolist()
    if n == 0:
        raise dnax.DataError("the val split is empty")
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "val_loss": loss / n}


def count_flops(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """FLOPs of ``fn(*args)`` as ``torch.utils.flop_counter`` counts them (2 per multiply-add;
    convolutions and matrix products, not activations or BatchNorm), and its result."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def network_flops(model: nn.Module, resolution: int) -> int:
    """FLOPs of one (1, 3, resolution, resolution) image through ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    flops, _ = count_flops(model, torch.zeros(1, 3, resolution, resolution, device=device))
    model.train(was_training)
    return flops


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- random state ------------------------------------------------------------------------------


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state (torch, CUDA, numpy, Python, and ``generator``'s), in a form
    ``torch.load(weights_only=True)`` reads back."""
    npy = np.random.get_state()
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                           "numpy": [npy[0], torch.from_numpy(npy[1].astype(np.int64)),
                                     *npy[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def seed_everything(seed: int) -> None:
    """Seed the global torch, numpy and Python RNGs (data augmentation draws from them)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- processes ---------------------------------------------------------------------------------


def ddp(module: nn.Module, device: torch.device | str, dist: dnax.DistInfo, **kwargs: Any
        ) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when ``dist`` runs several processes."""
    if not dist.enabled:
        return module
    device = torch.device(device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)


# --- the loop ----------------------------------------------------------------------------------

#: ``step(net, images, labels) -> loss``: one batch's loss (under autocast)
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class EpochLoop:
    """Epochs over ``loader``, resumable at every epoch boundary, bit for bit.

    Each step runs ``step_loss`` under autocast, checks the loss is finite (at each progress
    report), steps every optimizer through :class:`Backward` (scaling, clipping), the scheduler
    per update and the EMA. Each epoch ends with ``evaluate(epoch)`` (may return ``{}``), the
    scheduler's epoch step, one atomic resume state at ``resume`` (model, EMA, optimizer,
    scheduler, scaler, every RNG) on process 0, a progress report and a log line. A resume state
    whose fingerprint differs is logged and ignored.
    """

    def __init__(self, ctx: dnax.StageContext, *, name: str, label: str, model: nn.Module,
                 optimizer: Any, scheduler: Any, loader: Any, epochs: int, step_loss: StepLoss,
                 resume: str, fingerprint: str, amp: bool | str = False,
                 clip_grad: float | None = None, ema: Any = None, hint: str = "",
                 evaluate: Callable[[int], Mapping[str, float]] | None = None,
                 metric: str | None = None,
                 resumed: str = "resuming {label} after epoch {epoch}/{epochs}"):
        self.ctx, self.name, self.label = ctx, name, label
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loader, self.epochs, self.step_loss = loader, epochs, step_loss
        self.resume, self.fingerprint, self.hint = resume, fingerprint, hint
        self.device = torch.device(ctx.device)
        self.dtype = amp_dtype(self.device, amp)
        self.backward = Backward(self.device, self.dtype, clip_grad)
        self.ema, self.evaluate, self.metric, self.resumed = ema, evaluate, metric, resumed
        self.net = ddp(model, self.device, ctx.dist)
        self.run = {"epoch": 0, "updates": 0, "seconds": 0.0, "history": []}

    @property
    def exported(self) -> nn.Module:
        """The weights to evaluate and export: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> dict[str, Any]:
        """Train to ``epochs``, resuming from ``resume``; returns epoch, updates, seconds and
        the per-epoch history."""
        self._restore()
        for epoch in range(self.run["epoch"], self.epochs):
            t0 = time.perf_counter()
            task = f"{self.name} epoch {epoch + 1}/{self.epochs}"
            loss = self._epoch(task, epoch)
            scores = dict(self.evaluate(epoch)) if self.evaluate is not None else {}
            self.scheduler.step(epoch + 1, scores.get(self.metric) if self.metric else None)
            seconds = time.perf_counter() - t0
            self.run["seconds"] += seconds
            self.run["epoch"] = epoch + 1
            self.run["history"].append({"epoch": epoch + 1, "loss": loss, **scores,
                                        "lr": self.optimizer.param_groups[0]["lr"],
                                        "seconds": seconds})
            if self.ctx.dist.is_main:
                self.ctx.run_dir.save_state(self.resume, self._snapshot())
            steps = len(self.loader)
            self.ctx.progress(task, steps, steps, loss=loss, **scores)
            measured = "".join(f", {name} {scores[k]:.2f} %" for k, name in
                               (("top1", "top-1"), ("top5", "top-5")) if k in scores)
            self.ctx.log(f"{task}: loss {loss:.4f}{measured} ({seconds:.1f} s)")
        return self.run

    def _epoch(self, task: str, epoch: int) -> float:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.net.train()
        steps = len(self.loader)
        every = max(1, steps // 20)
        total = torch.zeros((), device=self.device)
        for i, (images, labels) in enumerate(self.loader, 1):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                loss = self.step_loss(self.net, images, labels)
            self.backward(loss, self.optimizer, self.model.parameters)
            self.run["updates"] += 1
            self.scheduler.step_update(self.run["updates"])
            if self.ema is not None:
                self.ema.update(self.model, step=self.run["updates"])
            total += loss.detach().float()
            if i % every == 0 or i == steps:
                mean = total.item() / i
                if not math.isfinite(mean):
                    raise dnax.DivergenceError(
                        f"{task}: loss is {mean} at step {i}; the last resume state "
                        f"({self.resume}) holds the last good epoch{self.hint}")
                self.ctx.progress(task, i, steps, loss=mean)
        return total.item() / steps

    def _snapshot(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, **self.run, "model": self.model.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.backward.state_dict(),
                "rng": rng_state(getattr(self.loader, "generator", None))}

    def _restore(self) -> None:
        state = self.ctx.run_dir.load_state(self.resume)
        if state is not None and state.get("fingerprint") != self.fingerprint:
            self.ctx.log(f"{self.ctx.run_dir.path(self.resume)}: made for another network or "
                         f"recipe; {self.label} from scratch")
            state = None
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"] if state["ema"] is not None
                                            else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.step(state["epoch"])
        self.backward.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], getattr(self.loader, "generator", None))
        self.run = {k: state[k] for k in self.run}
        self.ctx.log(self.resumed.format(label=self.label, epoch=self.run["epoch"],
                                         epochs=self.epochs))
