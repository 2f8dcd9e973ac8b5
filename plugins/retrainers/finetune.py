"""Retrainer ``finetune``: start the selected network from what the search trained, then fine-tune
it end to end with the teacher's soft logits.

Every searched layer comes from its block supernet (the chosen op of every layer of the chosen
cell), stem and head from the teacher where their shapes match, and the adapters between blocks
are folded into the next layer (:mod:`.stitch`), so the network is exactly the one ``timm``
retrains: same arch def, same parameter count, no extra layers. Before fine-tuning, its output at
each block boundary is checked on held-out images against the supernets chained with their
adapters. Then it trains as the ``timm`` retrainer does (timm's optimizer, scheduler, EMA; the
toolkit's loop; resumable), with ``distill`` of the loss from the teacher's logits.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from attrs import field, frozen
from torch import nn

import dnax
from dnax.plugins.toolkit.supernet import load_supernet
from dnax.plugins.toolkit.training import evaluate

from .stitch import deviations, stitch
from .timm_retrainer import TimmRetrainer, TimmRetrainerConfig, _weight


@frozen
class FinetuneConfig(TimmRetrainerConfig):
    """Stitch the selected network from the block supernets and the teacher, then fine-tune it
    with the teacher's soft logits (timm's optimizer, scheduler, EMA) and export it."""

    recipe: Literal["official", "quick"] = field(default="quick", metadata={
        "help": "'official': RMSprop-TF, step decay (EfficientNet/DNA); 'quick': AdamW, cosine"})
    epochs: int = field(default=3, validator=dnax.positive,
                        metadata={"help": "passes over the train split"})
    distill: float = field(default=0.5, validator=_weight, metadata={
        "help": "weight of KL from the teacher's logits (the rest: the labels' cross-entropy)"})
    distill_temperature: float = field(default=2.0, validator=dnax.positive,
                                       metadata={"help": "softmax temperature of distillation"})
    recalibrate: int = field(default=8, validator=dnax.non_negative, metadata={
        "help": "train batches (of batch_size) that recompute the stitched network's BatchNorm "
                "statistics before fine-tuning (a supernet's are averaged over all its paths); "
                "0: keep the supernets'"})
    tolerance: float = field(default=1e-4, validator=dnax.positive, metadata={
        "help": "largest relative deviation at an exactly stitched block boundary (float32)"})


class FinetuneRetrainer(TimmRetrainer):
    """Stitch the selected network from the block supernets (adapters folded) and the teacher's
    stem and head, check it block by block, then fine-tune it with the teacher's logits.

    Reports, beside the ``timm`` retrainer's metrics, the stitched network's val top-1 before
    any fine-tuning (``stitched_top1``), the largest block-boundary deviation of the exactly
    stitched blocks (``stitch_max_deviation``) and how many layers are approximate."""

    Config = FinetuneConfig

    def initialise(self, ctx: dnax.StageContext, selection: dnax.Selection, model: nn.Module,
                   val: Any) -> dict[str, float]:
        teacher_result, train = ctx.results.get("teacher"), ctx.results.get("train")
        if teacher_result is None or train is None:
            raise dnax.ArtifactError(f"{ctx.run_dir.root}: finetune needs the teacher and "
                                     "train stages' results")
        specs = teacher_result.blocks
        space = ctx.plugins.space
        chosen = [space.candidates(spec)[i] for spec, i in
                  zip(specs, selection.candidates, strict=True)]
        k = len(selection.arch_def) - len(chosen)
        if k < 0 or any(tuple(selection.arch_def[k + b]) != tuple(c.arch)
                        for b, c in enumerate(chosen)):
            raise dnax.PluginError("$.retrainer: finetune needs an arch def that ends with the "
                                   "chosen cells, one stage per block (as the mbconv space's)")
        paths = {b.block: b.path for b in train.blocks}
        supernets = [load_supernet(ctx, paths[spec.index], spec).float() for spec in specs]
        teacher = self._load_teacher(ctx).float()
        model.eval()
        report = stitch(model, teacher, supernets, chosen, specs)
        for line in report.lines():
            ctx.log(f"finetune: {line}")
        images = next(iter(ctx.loader("heldout", self.config.eval_batch_size)))[0]
        images = images.to(ctx.device)
        devs = deviations(model, supernets, chosen, images,
                          stem_from_teacher=report.stem_from_teacher)
        approx = report.inexact
        exact = [d for b, d in enumerate(devs) if b not in approx]
        for b, d in enumerate(devs):
            ctx.log(f"finetune: block {b} boundary deviates by {d:.2e} (relative)"
                    + (" [not exact: see the approximate and fresh layers]" if b in approx
                       else ""))
        worst = max(exact, default=0.0)
        if worst > self.config.tolerance:
            raise dnax.PluginError(f"finetune: the stitched network deviates by {worst:.2e} at "
                                   "an exactly stitched block boundary (tolerance "
                                   f"{self.config.tolerance:g}): the folding is wrong")
        del supernets
        if self.config.recalibrate:
            recalibrate(model, ctx.loader("train", self.config.batch_size, shuffle=True),
                        self.config.recalibrate, ctx.device)
        with torch.no_grad():
            top1 = evaluate(model, val, ctx.device, None, ctx.dist)["top1"]
        ctx.log(f"finetune: stitched network before fine-tuning: top-1 {top1:.2f} %")
        if self.config.distill == 0:
            self._teacher_model = None  # not needed for fine-tuning on the labels alone
        self.stitch_report = report
        self.deviations = devs
        return {"stitched_top1": float(top1), "stitch_max_deviation": worst,
                "stitch_max_deviation_approximate": max(
                    (d for b, d in enumerate(devs) if b in approx), default=0.0),
                "stitch_approximate_layers": float(len(report.approximate))}

    def export_meta(self) -> dict[str, Any]:
        report = getattr(self, "stitch_report", None)
        if report is None:
            return {}
        return {"stitch": {"teacher": report.teacher, "fresh": report.fresh,
                           "folded": report.folded, "approximate": report.approximate,
                           "block_deviations": self.deviations}}


@torch.no_grad()
def recalibrate(model: nn.Module, loader: Any, batches: int, device: str) -> None:
    """Recompute every BatchNorm's running statistics of ``model`` as the cumulative average
    over ``batches`` batches of ``loader`` (batch statistics, no dropout or drop-path, no
    gradient); eval mode after."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for _, (images, _labels) in zip(range(batches), loader, strict=False):
        model(images.to(device, non_blocking=True))
    for bn, momentum in zip(norms, saved, strict=True):
        bn.momentum = momentum
    model.eval()


@dnax.hookimpl
def dnax_register_retrainers(register: Any) -> None:
    register("finetune", FinetuneRetrainer)
