"""Retrainer ``timm``: train the selected network from scratch with timm, then export it.

The network is ``timm.models.efficientnet.EfficientNet(decode_arch_def(selection.arch_def),
num_classes=..., **selection.model_kwargs)``; optimizer, scheduler and EMA come from timm's own
factories. Each epoch ends with one atomic resume state (``model/resume.pt``), so an interrupted
stage continues where it stopped when the pipeline is run again. With EMA on, the EMA weights are
the ones evaluated each epoch, reported and exported.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from attrs import field, frozen
from torch import nn

import dnax

from .export import META, build_model, export_onnx, load_model, onnx_max_error, save_model

RESUME = "model/resume.pt"
FOLDER = "model"


def _fraction(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"must be in [0, 1), got {value}")


def _weight(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"must be in [0, 1], got {value}")


@frozen
class Recipe:
    """A timm optimizer + scheduler preset; ``lr`` is for a global batch of 1024."""

    opt: str
    lr: float
    weight_decay: float
    sched: str
    opt_kwargs: dict[str, float] = field(factory=dict)
    decay_epochs: float = 3.0
    decay_rate: float = 0.963
    step_on_epochs: bool = True


RECIPES: dict[str, Recipe] = {
    # EfficientNet / DNA: RMSprop-TF, lr 0.064 per 1024 images, x0.963 every 3 epochs
    "official": Recipe("rmsproptf", 0.064, 1e-5, "step", {"eps": 1e-3, "momentum": 0.9}),
    # AdamW with a per-step cosine schedule: converges in far fewer epochs
    "quick": Recipe("adamw", 0.008, 0.05, "cosine", step_on_epochs=False),
}


@frozen
class TimmRetrainerConfig:
    """Retrain the selected network from scratch with timm (optimizer, scheduler, EMA) and export
    it."""

    recipe: Literal["official", "quick"] = field(default="official", metadata={
        "help": "'official': RMSprop-TF, step decay (EfficientNet/DNA); 'quick': AdamW, cosine"})
    epochs: int = field(default=10, validator=dnax.positive,
                        metadata={"help": "passes over the train split (the paper: 500)"})
    batch_size: int = field(default=64, validator=dnax.positive,
                            metadata={"help": "images per step and process"})
    lr: float | None = field(default=None, validator=dnax.positive, metadata={
        "help": "learning rate; default: the recipe's, scaled linearly to the global batch"})
    weight_decay: float | None = field(default=None, validator=dnax.non_negative, metadata={
        "help": "weight decay (not on biases and norms); default: the recipe's"})
    warmup_epochs: int = field(default=1, validator=dnax.non_negative,
                               metadata={"help": "linear warm-up epochs (the paper: 5 of 500)"})
    label_smoothing: float = field(default=0.1, validator=_fraction,
                                   metadata={"help": "label smoothing of the cross-entropy"})
    drop_rate: float = field(default=0.2, validator=_fraction,
                             metadata={"help": "dropout before the classifier"})
    drop_path_rate: float = field(default=0.2, validator=_fraction,
                                  metadata={"help": "stochastic depth of the last layer"})
    ema_decay: float = field(default=0.9998, validator=_fraction, metadata={
        "help": "EMA decay of the weights (with timm's warm-up); 0 turns EMA off"})
    augment: bool = field(default=True,
                          metadata={"help": "ask the data source for augmented train images"})
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA (bf16 or fp16)"})
    clip_grad: float | None = field(default=None, validator=dnax.positive,
                                    metadata={"help": "clip the gradient norm to this"})
    distill: float = field(default=0.0, validator=_weight, metadata={
        "help": "weight of distillation from the teacher's logits (0: no teacher, as the paper)"})
    distill_temperature: float = field(default=1.0, validator=dnax.positive,
                                       metadata={"help": "softmax temperature of distillation"})
    eval_batch_size: int = field(default=256, validator=dnax.positive,
                                 metadata={"help": "images per step when evaluating"})
    eval_every: int = field(default=1, validator=dnax.positive, metadata={
        "help": "measure val top-1/top-5 every this many epochs (and after the last)"})
    num_workers: int = field(default=0, validator=dnax.non_negative,
                             metadata={"help": "data loading worker processes"})
    onnx: bool = field(default=False, metadata={"help": "also write model/model.onnx"})
    onnx_opset: int | None = field(default=None, validator=dnax.positive,
                                   metadata={"help": "ONNX opset; default: the exporter's"})


class TimmRetrainer(dnax.Retrainer):
    """Train the selected network from scratch with timm (RMSprop-TF or AdamW, EMA, drop-path,
    label smoothing), resumable each epoch; export model.safetensors + model.json (+ ONNX).

    Reports top-1/top-5 on the val split of the exported (EMA when enabled) weights, params,
    FLOPs at the pipeline resolution (batch 1), epochs and training seconds.
    """

    Config = TimmRetrainerConfig

    @classmethod
    def check(cls, config: TimmRetrainerConfig, pipeline: Any) -> list[str]:
        problems = []
        if config.onnx:
            try:
                import onnx  # noqa: F401
            except ImportError:
                problems.append("onnx: needs the onnx package (pip install onnx onnxruntime)")
        return problems

    def retrain(self, ctx: dnax.StageContext, selection: dnax.Selection) -> dnax.RetrainResult:
        cfg = self.config
        device = torch.device(ctx.device)
        num_classes = ctx.plugins.data.num_classes
        torch.manual_seed(ctx.seed)  # the same initial weights whatever ran before
        model = build_model(selection.arch_def, num_classes, selection.model_kwargs,
                            drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate).to(device)
        ema = _ema(model, cfg.ema_decay)
        train = ctx.loader("train", cfg.batch_size, shuffle=True, augment=cfg.augment,
                           drop_last=True, num_workers=cfg.num_workers)
        if len(train) == 0:
            raise dnax.DataError(f"train split: {len(train.dataset)} images, fewer than "
                                 f"$.retrainer.batch_size = {cfg.batch_size}")
        val = ctx.loader("val", cfg.eval_batch_size, num_workers=cfg.num_workers)
        steps = len(train)
        optimizer, scheduler = self._optimizer(model, steps, ctx.dist.world_size)
        amp_dtype = _amp_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        fingerprint = _fingerprint(selection, num_classes, cfg, ctx.dist.world_size)
        run = {"epoch": 0, "updates": 0, "seconds": 0.0, "history": []}
        state = ctx.run_dir.load_state(RESUME)
        if state is not None and state.get("fingerprint") != fingerprint:
            ctx.log(f"{ctx.run_dir.path(RESUME)}: made for another network or recipe; "
                    "retraining from scratch")
            state = None
        if state is not None:
            _restore(state, model, ema, optimizer, scheduler, scaler, train)
            run = {k: state[k] for k in run}
            ctx.log(f"resuming retraining after epoch {run['epoch']}/{cfg.epochs}")

        net: nn.Module = model
        if ctx.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        teacher = self._teacher(ctx) if cfg.distill > 0 else None
        exported = ema.module if ema is not None else model

        for epoch in range(run["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            task = f"retrain epoch {epoch + 1}/{cfg.epochs}"
            loss = self._train_epoch(ctx, task, net, model, ema, teacher, train, optimizer,
                                     scheduler, scaler, amp_dtype, epoch, run)
            last = epoch + 1 == cfg.epochs
            scores = (evaluate(exported, val, device, amp_dtype, ctx.dist)
                      if last or (epoch + 1) % cfg.eval_every == 0 else {})
            scheduler.step(epoch + 1, scores.get("top1"))
            seconds = time.perf_counter() - t0
            run["seconds"] += seconds
            run["epoch"] = epoch + 1
            run["history"].append({"epoch": epoch + 1, "loss": loss, **scores,
                                   "lr": optimizer.param_groups[0]["lr"], "seconds": seconds})
            if ctx.dist.is_main:
                ctx.run_dir.save_state(RESUME, _snapshot(model, ema, optimizer, scheduler,
                                                         scaler, train, run, fingerprint))
            ctx.progress(task, steps, steps, loss=loss, **scores)
            measured = (f", top-1 {scores['top1']:.2f} %, top-5 {scores['top5']:.2f} %"
                        if scores else "")
            ctx.log(f"{task}: loss {loss:.4f}{measured} ({seconds:.1f} s)")

        last = run["history"][-1] if run["history"] else {}
        metrics = {
            "top1": float(last.get("top1", float("nan"))),
            "top5": float(last.get("top5", float("nan"))),
            "params": float(sum(p.numel() for p in exported.parameters())),
            "flops": float(count_flops(exported, ctx.resolution)),
            "epochs": float(run["epoch"]),
            "seconds": float(run["seconds"]),
        }
        if ctx.dist.is_main:
            self._export(ctx, selection, exported, metrics, run["history"], val)
            ctx.run_dir.path(RESUME).unlink(missing_ok=True)
        ctx.dist.barrier()
        return dnax.RetrainResult(f"{FOLDER}/model.safetensors", f"{FOLDER}/model.json", metrics)

    # --- pieces --------------------------------------------------------------------------

    def _optimizer(self, model: nn.Module, steps: int, world_size: int) -> tuple[Any, Any]:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        cfg = self.config
        recipe = RECIPES[cfg.recipe]
        lr = cfg.lr if cfg.lr is not None else recipe.lr * cfg.batch_size * world_size / 1024
        wd = cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay
        optimizer = create_optimizer_v2(model, recipe.opt, lr=lr, weight_decay=wd,
                                        **recipe.opt_kwargs)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=recipe.sched, num_epochs=cfg.epochs,
            decay_epochs=recipe.decay_epochs, decay_rate=recipe.decay_rate,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=lr * 1e-3, min_lr=lr * 1e-3,
            step_on_epochs=recipe.step_on_epochs, updates_per_epoch=steps)
        return optimizer, scheduler

    def _teacher(self, ctx: dnax.StageContext) -> nn.Module:
        result = ctx.results["teacher"]
        if result.num_classes != ctx.plugins.data.num_classes:
            raise dnax.ConfigError(
                f"$.retrainer.distill: the teacher predicts {result.num_classes} classes, the "
                f"data has {ctx.plugins.data.num_classes}; set distill = 0")
        return ctx.plugins.teacher.load(ctx, result).eval()

    def _train_epoch(self, ctx: dnax.StageContext, task: str, net: nn.Module, model: nn.Module,
                     ema: Any, teacher: nn.Module | None, loader: Any, optimizer: Any,
                     scheduler: Any, scaler: Any, amp_dtype: torch.dtype | None, epoch: int,
                     run: dict[str, Any]) -> float:
        cfg = self.config
        device = next(model.parameters()).device
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        net.train()
        steps = len(loader)
        every = max(1, steps // 20)
        total = torch.zeros((), device=device)
        for i, (images, labels) in enumerate(loader, 1):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = net(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(images)
                    loss = ((1 - cfg.distill) * loss
                            + cfg.distill * kd_loss(logits, target, cfg.distill_temperature))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            run["updates"] += 1
            scheduler.step_update(run["updates"])
            if ema is not None:
                ema.update(model, step=run["updates"])
            total += loss.detach().float()
            if i % every == 0 or i == steps:
                mean = total.item() / i
                if not np.isfinite(mean):
                    raise dnax.DivergenceError(
                        f"{task}: loss is {mean} at step {i}; the last resume state "
                        f"({RESUME}) holds the last good epoch; lower $.retrainer.lr")
                ctx.progress(task, i, steps, loss=mean)
        return total.item() / steps

    def _export(self, ctx: dnax.StageContext, selection: dnax.Selection, model: nn.Module,
                metrics: Mapping[str, float], history: list[dict[str, Any]], val: Any) -> None:
        import timm

        cfg = self.config
        data = ctx.plugins.data
        classes = getattr(data, "classes", None) or [str(i) for i in range(data.num_classes)]
        meta: dict[str, Any] = {
            "arch_def": [list(stage) for stage in selection.arch_def],
            "model_kwargs": dict(selection.model_kwargs),
            "num_classes": data.num_classes,
            "classes": list(classes),
            "data_config": attrs.asdict(ctx.data_config),
            "metrics": dict(metrics),
            "ema": cfg.ema_decay > 0,
            "selection": {"candidates": list(selection.candidates), "score": selection.score,
                          "costs": dict(selection.costs)},
            "retrainer": attrs.asdict(cfg),
            "history": history,
            "versions": {"dnax": dnax.__version__, "timm": timm.__version__,
                         "torch": torch.__version__},
        }
        if cfg.onnx:
            path = export_onnx(model, ctx.run_dir.path(FOLDER, "model.onnx"), ctx.resolution,
                               opset=cfg.onnx_opset)
            images = next(iter(val))[0][:8]
            err = onnx_max_error(model, path, images)
            meta["onnx"] = {"file": "model.onnx", "onnxruntime_max_abs_diff": err}
            if err is not None and err > 1e-3:
                raise dnax.ArtifactError(f"{path}: onnxruntime's logits differ from torch's by "
                                         f"{err:.2e}")
        save_model(ctx.run_dir, FOLDER, model, meta)


# --- helpers ------------------------------------------------------------------------------


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: KL(teacher || student) of the softened logits, times T²."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device,
             amp_dtype: torch.dtype | None = None, dist: Any = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (as timm reports it) of ``model`` over ``loader``
    (summed over ranks)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, device=device, dtype=torch.float64)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        with _autocast(device, amp_dtype):
            logits = model(images)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top == labels[:, None]
        counts += torch.stack([hit[:, 0].sum(), hit.any(-1).sum(),
                               torch.tensor(len(labels), device=device)]).double()
    if dist is not None and dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(counts)
    model.train(was_training)
    n = max(counts[2].item(), 1.0)
    return {"top1": 100.0 * counts[0].item() / n, "top5": 100.0 * counts[1].item() / n}


def count_flops(model: nn.Module, resolution: int) -> int:
    """FLOPs of one forward of a (1, 3, resolution, resolution) image (torch's flop counter:
    convolutions and matmuls, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, resolution, resolution, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def _ema(model: nn.Module, decay: float) -> Any:
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _fingerprint(selection: dnax.Selection, num_classes: int, cfg: TimmRetrainerConfig,
                 world_size: int) -> str:
    body = json.dumps([[list(s) for s in selection.arch_def], selection.model_kwargs,
                       num_classes, attrs.asdict(cfg), world_size], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _snapshot(model: nn.Module, ema: Any, optimizer: Any, scheduler: Any, scaler: Any,
              loader: Any, run: Mapping[str, Any], fingerprint: str) -> dict[str, Any]:
    """Everything an epoch boundary needs to continue bit for bit: weights, optimizer,
    scheduler, scaler and every random state (torch, CUDA, the loader's, numpy, Python)."""
    py = random.getstate()
    npy = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], torch.from_numpy(npy[1].astype(np.int64)), *npy[2:]],
    }
    if getattr(loader, "generator", None) is not None:
        rng["loader"] = loader.generator.get_state()
    return {"fingerprint": fingerprint, **run, "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng}


def _restore(state: Mapping[str, Any], model: nn.Module, ema: Any, optimizer: Any,
             scheduler: Any, scaler: Any, loader: Any) -> None:
    model.load_state_dict(state["model"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    elif ema is not None:
        ema.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.step(state["epoch"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng["numpy"]
    np.random.set_state((npy[0], npy[1].numpy().astype(np.uint32), *npy[2:]))
    if "loader" in rng and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(rng["loader"])


@dnax.hookimpl
def dnax_register_retrainers(register: Any) -> None:
    register("timm", TimmRetrainer)


@dnax.hookimpl
def dnax_load_model(path: Path) -> nn.Module | None:
    """``dnax.load_model``: a folder (or model.json) exported by this retrainer."""
    folder = path if path.is_dir() else path.parent
    if not (folder / META).exists():
        return None
    return load_model(folder)
