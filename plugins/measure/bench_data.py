"""``dnax bench data``: does data keep the ``distill`` step busy? The step's images per second
fed from a folder of image files (decoded and augmented by DataLoader workers) against the same
step on a batch already on the device."""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dnax
from dnax.loading import in_memory, resolve_workers
from dnax.plugins.data.fashion_mnist import DEBIAN_ROOT
from dnax.plugins.trainers.distill import DistillConfig, DistillStep, PathSampler


def jpeg_folder(root: Path, *, images: int = 512, size: int = 224,
                source: Path = DEBIAN_ROOT) -> Path:
    """An ImageNet-layout folder ``root/train/<class>/*.jpg`` of the first ``images``
    Fashion-MNIST training images, upscaled (bicubic) to ``size`` px RGB JPEGs (quality 90)."""
    from PIL import Image

    def read(name: str, offset: int) -> np.ndarray:
        path = source / name
        if not path.exists():
            raise dnax.DataError(f"{path}: missing (apt-get install dataset-fashion-mnist, or "
                                 "give --folder)")
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    pixels = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:images]
    labels = read("train-labels-idx1-ubyte.gz", 8)[:images]
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.BICUBIC).convert("RGB").save(
            folder / f"{i:05d}.jpg", quality=90)
    return root


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def bench_data(teacher: dnax.Teacher, model: torch.nn.Module, space: dnax.SearchSpace,
               dataset: torch.utils.data.Dataset, *, blocks: Sequence[dnax.BlockSpec],
               batch_size: int = 64, steps: int = 10, warmup: int = 2, device: str = "cpu",
               num_workers: dnax.Workers = "auto", amp: str = "bf16", seed: int = 0
               ) -> dict[str, Any]:
    """Images per second of the ``distill`` step fed by :func:`dnax.batches` over ``dataset``
    (``fed``), of that loader alone (``loader``), and of the same step on one batch already on
    the device (``resident``); ``fed / resident`` is the share of the step's speed the data
    keeps. Each is the wall time of ``steps`` batches after ``warmup``, the device
    synchronised at both ends (the loader's workers start before the warm-up)."""
    config = DistillConfig(amp=amp)
    model = model.eval().to(device)
    step = DistillStep(teacher, model, space, tuple(blocks), config, device=device, seed=seed)
    sampler = PathSampler(step.cells, "uniform", seed)
    need = (steps + warmup) * batch_size
    if len(dataset) < need:
        raise dnax.DataError(f"the folder has {len(dataset)} training images; {steps} + "
                             f"{warmup} steps of {batch_size} need {need}")

    def loader() -> Any:
        return dnax.batches(dataset, device, batch_size=batch_size, shuffle=True,
                            drop_last=True, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(seed))

    def timed(batches: Any, work: Any) -> float:
        it = iter(batches)
        for t in range(warmup):
            work(next(it), t)
        _synchronize(device)
        t0 = time.perf_counter()
        for t in range(warmup, warmup + steps):
            work(next(it), t)
        _synchronize(device)
        return steps * batch_size / (time.perf_counter() - t0)

    def train(batch: tuple[torch.Tensor, Any], t: int) -> None:
        images = batch[0].to(device, non_blocking=True)
        if step.memory is not None:
            images = images.contiguous(memory_format=step.memory)
        step(images, sampler(0, t))

    first = next(iter(loader()))[0].to(device)
    resident = timed(iter(lambda: (first,), None), train)
    fed = timed(loader(), train)
    only = timed(loader(), lambda batch, t: batch[0].to(device, non_blocking=True))
    workers = 0 if in_memory(dataset) else resolve_workers(num_workers, device)
    return {"device": device, "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "workers": workers, "images": len(dataset),
            "amp": amp if device.startswith("cuda") else "none",
            "resident_images_per_s": resident, "fed_images_per_s": fed,
            "loader_images_per_s": only, "fed_over_resident": fed / resident}


def bench_in_memory(dataset: torch.utils.data.Dataset, *, batch_size: int = 256,
                    batches: int = 20, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Images per second of an in-memory data set's batches (augmented as it says): one
    image at a time through a DataLoader in the main process (``per_image``, the path before
    :func:`dnax.batches`) against whole batches gathered on ``device`` (``gathered``)."""
    if not in_memory(dataset):
        raise dnax.DataError(f"{type(dataset).__name__} is not held in memory")
    g = torch.Generator().manual_seed(seed)
    loaders = {
        "per_image": torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                 drop_last=True, generator=g),
        "gathered": dnax.batches(dataset, device, batch_size=batch_size, shuffle=True,
                                 drop_last=True, generator=g, num_workers=0),
    }
    out = {}
    for name, loader in loaders.items():
        it = iter(loader)
        next(it)
        _synchronize(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            images, _labels = next(it)
            images = images.to(device, non_blocking=True)
        _synchronize(device)
        out[f"{name}_images_per_s"] = batches * batch_size / (time.perf_counter() - t0)
    return out
