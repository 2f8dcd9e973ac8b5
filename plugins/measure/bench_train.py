"""Measured speed of the supernet training step (``dnax bench train``): the ``distill`` step
beside its floor, and the official code's block-after-block schedule for the same work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import dnax
from dnax.plugins.toolkit.timing import median_ms
from dnax.plugins.trainers.distill import DistillConfig, DistillStep, PathSampler, feature_loss

#: how :func:`teacher_network` made the weights of the network it returns
UNTRAINED = "untrained (timing only)"
PREPARED = "from the teacher's prepare() (timing only)"


def teacher_network(teacher: dnax.Teacher, ctx: dnax.StageContext | None = None
                    ) -> tuple[nn.Module, str]:
    """The teacher network to time, and how its weights were made (:data:`UNTRAINED` or
    :data:`PREPARED`); weights do not change a timing.

    A teacher that offers ``build_model(num_classes)`` (an untrained network, as the built-in
    ``efficientnet`` teacher does) is built that way, with no data and in no time. Any other
    goes through the :class:`dnax.Teacher` interface: ``prepare(ctx)`` (which loads the
    teacher's weights, or trains it on ``ctx``'s data) then ``load(ctx, result)``; ``ctx``
    (give it a scratch run directory: prepare may write there) is then required."""
    build = getattr(teacher, "build_model", None)
    if callable(build):
        return build(1000), UNTRAINED  # the classifier is never run: any class count will do
    if ctx is None:
        raise dnax.ConfigError(f"$.teacher: {type(teacher).__name__} has no build_model(); "
                               "timing it needs a pipeline whose data its prepare() can use")
    result = teacher.prepare(ctx)
    return teacher.load(ctx, result), PREPARED


def _prefix(teacher: dnax.Teacher, model: nn.Module, spec: dnax.BlockSpec
            ) -> tuple[str, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """The teacher up to ``spec``'s output (timm: stem + model.blocks[:stage+1]); teachers
    without ``forward_intermediates`` run whole."""
    if hasattr(model, "forward_intermediates") and hasattr(model, "blocks"):
        def run(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return model.forward_intermediates(
                    x, indices=[spec.stage, spec.stage + 1], stop_early=True,
                    intermediates_only=True, extra_blocks=True)
        return "timm-prefix", run

    def whole(x: torch.Tensor) -> list[torch.Tensor]:
        feats = teacher.block_features(model, x)
        return [feats[spec.index], feats[spec.index + 1]]
    return "full-teacher", whole


def bench_train(teacher: dnax.Teacher, model: nn.Module, space: dnax.SearchSpace, *,
                blocks: Sequence[dnax.BlockSpec] | None = None, resolution: int = 224,
                batch_size: int = 64, device: str = "cpu", steps: int = 20, warmup: int = 3,
                amp: str = "none", channels_last: bool = False, sampling: str = "uniform",
                seed: int = 0) -> dict[str, Any]:
    """Time one ``distill`` step (every cell of every block from one teacher forward) on random
    images of the teacher's input size, beside:

    * its floor, measured in the same run: the teacher forward alone plus forward/backward of
      the students on paths fixed in advance (the same ops, no sampling, no optimizer);
    * the official schedule for the same work: for every block and every cell (the official code
      trained each depth variant separately) the teacher prefix up to that block, then that
      cell's forward/backward/optimizer step.

    Every op's optimizer state is allocated before timing (one fair pass over the ops), and the
    measurements take turns within each timed step, so load drift on a shared machine hits all.
    ``model`` is the teacher network (``teacher.load(...)``, or any weights: timing only).
    Times are medians in milliseconds; returns plain numbers."""
    blocks = tuple(blocks if blocks is not None else teacher.blocks(resolution))
    config = DistillConfig(amp=amp, channels_last=channels_last, sampling=sampling)
    model = model.eval().to(device)
    step = DistillStep(teacher, model, space, blocks, config, device=device, seed=seed)
    sampler = PathSampler(step.cells, sampling, seed)
    size = teacher.data_config(resolution).input_size
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *size, generator=g).to(device)
    if step.memory is not None:
        images = images.contiguous(memory_format=step.memory)

    # Adam allocates an op's state on its first gradient: touch every op once (fair paths)
    # before timing, or the first steps of a many-op space time that allocation, not a step.
    fair = PathSampler(step.cells, "fair", seed)
    for t in range(max((len(c.ops) for cells in step.cells for c in cells), default=1)):
        step(images, fair(0, t))
    feats = step.features(images)
    paths = [sampler(0, t) for t in range(steps + warmup)]  # the step's own paths

    def student(t: int) -> None:
        for opt in step.optimizers:
            opt.zero_grad(set_to_none=True)
        step.losses(feats, paths[t])[0].backward()

    fns: dict[Any, Callable[[int], Any]] = {
        "step": lambda t: step(images, sampler(0, t)),
        "teacher": lambda t: step.features(images),
        "student": student,
    }
    kind = ""
    for i, spec in enumerate(blocks):
        kind, prefix = _prefix(teacher, model, spec)
        net, opt = step.supernets[i], step.optimizers[i]
        for c in range(len(step.cells[i])):
            def official(t: int, c: int = c, prefix: Any = prefix, net: Any = net,
                         opt: Any = opt, i: int = i) -> None:
                with step._autocast():
                    x, y = prefix(images)
                    out = net(x, c, paths[t][i][c])
                opt.zero_grad(set_to_none=True)
                feature_loss(out, y, config.loss).backward()
                opt.step()

            fns[("official", i, c)] = official

    # interleaved: each measurement takes its turn within every step (see median_ms)
    ms = {k: t.ms for k, t in median_ms(fns, repeats=steps, warmup=warmup, device=device).items()}
    step_ms, teacher_ms, student_ms = ms.pop("step"), ms.pop("teacher"), ms.pop("student")
    official_ms = sum(ms.values())  # one step of every cell, each after its teacher prefix
    floor_ms = teacher_ms + student_ms
    return {
        "device": device, "batch_size": batch_size, "resolution": resolution,
        "blocks": len(blocks), "cells": sum(len(c) for c in step.cells), "steps": steps,
        "amp": amp if device.startswith("cuda") else "none", "sampling": sampling,
        "step_ms": step_ms, "teacher_ms": teacher_ms, "student_ms": student_ms,
        "floor_ms": floor_ms, "step_over_floor": step_ms / floor_ms,
        "official_ms": official_ms, "official_over_step": official_ms / step_ms,
        "official_prefix": kind, "images_per_s": batch_size / step_ms * 1e3,
    }
