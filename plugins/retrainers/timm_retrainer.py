"""Retrainer ``timm``: train the selected network from scratch with timm, then export it.

The network is timm's ``EfficientNet`` of ``selection.arch_def`` and ``selection.model_kwargs``
(built by :mod:`dnax.plugins.toolkit.builder`); optimizer, scheduler and EMA come from timm's own
factories, the loop is :class:`dnax.plugins.toolkit.training.EpochLoop`. Each epoch ends with one
atomic resume state (``model/resume.pt``), so an interrupted stage continues where it stopped
when the pipeline is run again. With EMA on, the EMA weights are
the ones evaluated each epoch, reported and exported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field, frozen
from torch import nn

import dnax
from dnax.plugins.toolkit.training import EpochLoop, evaluate, network_flops, num_params

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
    num_workers: dnax.Workers = dnax.workers_field("the train and val images")
    seed: int | None = field(default=None, validator=dnax.non_negative, metadata={
        "help": "seed of the initial weights, the data order and augmentation; default: the "
                "pipeline's"})
    onnx: bool = field(default=False, metadata={"help": "also write model/model.onnx"})
    onnx_opset: int | None = field(default=None, validator=dnax.positive,
                                   metadata={"help": "ONNX opset; default: the exporter's"})


class TimmRetrainer(dnax.Retrainer):
    """Train the selected network from scratch with timm (RMSprop-TF or AdamW, EMA, drop-path,
    label smoothing), resumable each epoch; export model.safetensors + model.json (+ ONNX).

    Reports top-1/top-5 on the val split of the exported (EMA when enabled) weights, params,
    FLOPs at the pipeline resolution (batch 1), epochs and training seconds; with a ``latency``
    cost model, also the network's measured latency beside its prediction and the budget
    (:func:`latency_metrics`).
    """

    Config = TimmRetrainerConfig

    @classmethod
    def check(cls, config: TimmRetrainerConfig, pipeline: Any, registry: Any) -> list[str]:
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
        seed = ctx.seed if cfg.seed is None else cfg.seed
        torch.manual_seed(seed)  # the same initial weights whatever ran before
        model = build_model(selection.arch_def, num_classes, selection.model_kwargs,
                            drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate).to(device)
        train = ctx.loader("train", cfg.batch_size, shuffle=True, augment=cfg.augment,
                           drop_last=True, num_workers=cfg.num_workers, seed=seed)
        if len(train) == 0:
            raise dnax.DataError(f"train split: {len(train.dataset)} images, fewer than "
                                 f"$.retrainer.batch_size = {cfg.batch_size}")
        val = ctx.loader("val", cfg.eval_batch_size, num_workers=cfg.num_workers)
        start = self.initialise(ctx, selection, model, val)
        ema = _ema(model, cfg.ema_decay)
        optimizer, scheduler = self._optimizer(model, len(train), ctx.dist.world_size)
        teacher = self._teacher(ctx) if cfg.distill > 0 else None

        def step_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor
                      ) -> torch.Tensor:
            logits = net(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            if teacher is None:
                return loss
            with torch.no_grad():
                target = teacher(images)
            return ((1 - cfg.distill) * loss
                    + cfg.distill * kd_loss(logits, target, cfg.distill_temperature))

        def scores(epoch: int) -> dict[str, float]:
            if epoch + 1 != cfg.epochs and (epoch + 1) % cfg.eval_every:
                return {}
            top = evaluate(loop.exported, val, device, loop.dtype, ctx.dist)
            return {"top1": top["top1"], "top5": top["top5"]}

        loop = EpochLoop(ctx, name="retrain", label="retraining", model=model,
                         optimizer=optimizer, scheduler=scheduler, loader=train,
                         epochs=cfg.epochs, step_loss=step_loss, resume=RESUME,
                         fingerprint=_fingerprint(selection, num_classes, cfg,
                                                  ctx.dist.world_size),
                         amp=cfg.amp, clip_grad=cfg.clip_grad, ema=ema, evaluate=scores,
                         metric="top1", hint="; lower $.retrainer.lr")
        run = loop.fit()
        exported = loop.exported
        last = run["history"][-1] if run["history"] else {}
        metrics = {
            "top1": float(last.get("top1", float("nan"))),
            "top5": float(last.get("top5", float("nan"))),
            "params": float(num_params(exported)),
            "flops": float(network_flops(exported, ctx.resolution)),
            "epochs": float(run["epoch"]),
            "seconds": float(run["seconds"]),
            **start,
        }
        if ctx.dist.is_main:
            metrics.update(latency_metrics(ctx, selection, exported))
            self._export(ctx, selection, exported, metrics, run["history"], val)
            ctx.run_dir.path(RESUME).unlink(missing_ok=True)
        ctx.dist.barrier()
        return dnax.RetrainResult(f"{FOLDER}/model.safetensors", f"{FOLDER}/model.json", metrics)

    # --- pieces --------------------------------------------------------------------------

    def initialise(self, ctx: dnax.StageContext, selection: dnax.Selection, model: nn.Module,
                   val: Any) -> dict[str, float]:
        """Set ``model``'s initial weights (here: timm's random init, left as built); return
        metrics of the start for the report."""
        return {}

    def export_meta(self) -> dict[str, Any]:
        """More entries of model.json (here: none)."""
        return {}

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
        return self._load_teacher(ctx)

    def _load_teacher(self, ctx: dnax.StageContext) -> nn.Module:
        """The prepared teacher network, loaded once per retrainer."""
        if getattr(self, "_teacher_model", None) is None:
            self._teacher_model = ctx.plugins.teacher.load(ctx, ctx.results["teacher"]).eval()
        return self._teacher_model

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
        meta.update(self.export_meta())
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


def latency_metrics(ctx: dnax.StageContext, selection: dnax.Selection, model: nn.Module
                    ) -> dict[str, float]:
    """Where the pipeline has a cost model that times networks (``latency``: its table's
    device, runtime, threads, batch and protocol), ``model``'s measured latency
    (``latency_measured_ms``) beside the selection's prediction (``latency_predicted_ms``) and
    the budget (``latency_budget_ms``); nothing otherwise."""
    timers = [c for c in ctx.plugins.costs
              if c.metric == "latency" and isinstance(c, dnax.NetworkTimer)]
    if not timers:
        return {}
    out: dict[str, float] = {}
    if "latency" in selection.costs:
        out["latency_predicted_ms"] = float(selection.costs["latency"])
    if "latency" in selection.budgets:
        out["latency_budget_ms"] = float(selection.budgets["latency"])
    got = timers[0].measure_network(ctx, model)
    if "ms" not in got:
        ctx.log(f"latency of the retrained network not measured: {got.get('skipped')}")
        return out
    out["latency_measured_ms"] = float(got["ms"])
    predicted = out.get("latency_predicted_ms")
    vs = (f", predicted {predicted:.4g} ms ({100 * (predicted - got['ms']) / got['ms']:+.1f} %)"
          if predicted is not None else "")
    budget = out.get("latency_budget_ms")
    ctx.log(f"latency of the retrained network: measured {got['ms']:.4g} ms{vs}"
            + (f", budget {budget:.4g} ms" if budget is not None else ""))
    return out



def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: KL(teacher || student) of the softened logits, times T²."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def _ema(model: nn.Module, decay: float) -> Any:
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _fingerprint(selection: dnax.Selection, num_classes: int, cfg: TimmRetrainerConfig,
                 world_size: int) -> str:
    settings = attrs.asdict(cfg, filter=lambda a, _v: not a.metadata.get("runtime"))
    body = json.dumps([[list(s) for s in selection.arch_def], selection.model_kwargs,
                       num_classes, settings, world_size], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


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
