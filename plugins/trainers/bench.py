"""Measured speed of the supernet training step (``dnax bench train``): the ``distill`` step
beside its floor, and the official code's block-after-block schedule for the same work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import dnax

from .distill import DistillConfig, DistillStep, PathSampler, feature_loss


def _median_ms(fn: Callable[[int], Any], steps: int, warmup: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for t in range(warmup):
        fn(t)
    sync()
    times = []
    for t in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        fn(t)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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

    step_ms = _median_ms(lambda t: step(images, sampler(0, t)), steps, warmup, device)
    teacher_ms = _median_ms(lambda t: step.features(images), steps, warmup, device)
    feats = step.features(images)
    paths = [sampler(1, t) for t in range(steps + warmup)]

    def student(t: int) -> None:
        for opt in step.optimizers:
            opt.zero_grad(set_to_none=True)
        step.losses(feats, paths[t])[0].backward()

    student_ms = _median_ms(student, steps, warmup, device)

    official_ms, kind = 0.0, ""
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

            official_ms += _median_ms(official, steps, warmup, device)

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
