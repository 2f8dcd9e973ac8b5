"""Shared by the data sources: seeded train / heldout splits, array datasets, timm transforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

import dnax

#: decoded images of a split larger than this are resized per item instead of once up front
CACHE_BYTES = 512 * 2**20


def fraction(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    """attrs validator: a fraction in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")


def split_heldout(n: int, *, seed: int, fraction: float, size: int = 0,
                  salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint ``(kept, heldout)`` index arrays over ``range(n)``: ``size`` images held
    out when > 0, else ``round(fraction * n)``. Both come back sorted."""
    k = size if size > 0 else round(fraction * n)
    if k >= n:
        raise dnax.DataError(f"a held-out split of {k} images leaves none of {n} for training")
    order = np.random.default_rng([seed, salt]).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


def limit_indices(idx: np.ndarray, limit: int | None, *, seed: int, salt: int = 0
                  ) -> np.ndarray:
    """At most ``limit`` of ``idx``, a seeded random subset (all of them when ``limit`` is None)."""
    if limit is None or len(idx) <= limit:
        return idx
    pick = np.random.default_rng([seed, salt, 1]).choice(len(idx), size=limit, replace=False)
    return idx[np.sort(pick)]


def resize(x: torch.Tensor, size: Sequence[int], interpolation: str) -> torch.Tensor:
    """Resize a ``(B, C, H, W)`` float batch in [0, 1] to ``size`` (clamped back to [0, 1])."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    return F.interpolate(x, size=tuple(size), mode=mode, **kw).clamp_(0.0, 1.0)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` (C, H, W) moved by up to ``pad`` pixels each way, the border filled with zeros."""
    h, w = x.shape[-2:]
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return F.pad(x, (pad, pad, pad, pad))[:, i:i + h, j:j + w]


def random_shifts(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) moved by its own random offset of up to ``pad`` pixels
    each way, the border filled with zeros: :func:`random_shift` for a whole batch at once (the
    offsets drawn on the CPU from torch's global generator in the order :func:`random_shift`
    draws them image by image, so both give the same images)."""
    b, _, h, w = x.shape
    i, j = torch.randint(0, 2 * pad + 1, (b, 2)).T.to(x.device, non_blocking=True)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, :, None]  # B, H, 1
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, :]  # B, 1, W
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(
        0, 3, 1, 2)  # advanced indices first: (B, H, W, C) -> (B, C, H, W)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1] (uint8 scaled by 1/255)."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class ArrayDataset(torch.utils.data.Dataset):
    """Grey images held in memory (uint8, or floats in [0, 1]), prepared as ``data_config``
    says: resized to its input size, repeated to its channel count, normalised by its mean/std.
    ``augment`` shifts each image by up to a tenth of its side (no flips: digits are not
    mirror-symmetric).

    In-memory data (``dnax.loading.TensorData``): :meth:`to` moves it to the device once and
    :meth:`batch` prepares a whole batch there with tensor operations."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, data_config: dnax.DataConfig,
                 *, augment: bool = False):
        if images.ndim == 3:
            images = images[:, None]
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.channels, *self.size = data_config.input_size
        self.interpolation = data_config.interpolation
        self.mean = torch.tensor(data_config.mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(data_config.std, dtype=torch.float32)[:, None, None]
        self.shift = max(1, round(0.1 * min(self.size))) if augment else 0
        nbytes = images.shape[0] * images.shape[1] * self.size[0] * self.size[1] * 4
        self.images = images
        self.resized = nbytes <= CACHE_BYTES
        if self.resized:
            self.images = torch.cat([resize(unit(c), self.size, self.interpolation)
                                     for c in images.split(1024)]) if len(images) else images

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> ArrayDataset:
        """This data set with its images, labels and normaliser on ``device`` (in place)."""
        for name in ("images", "labels", "mean", "std"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prepared images and labels of ``indices``, as :meth:`__getitem__` gives each."""
        indices = indices.to(self.images.device, non_blocking=True)
        x = unit(self.images[indices])
        if not self.resized:
            x = resize(x, self.size, self.interpolation)
        if self.shift:
            x = random_shifts(x, self.shift)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std, self.labels[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = unit(self.images[i])
        if not self.resized:
            x = resize(x[None], self.size, self.interpolation)[0]
        if self.shift:
            x = random_shift(x, self.shift)
        if x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1)
        return (x - self.mean) / self.std, int(self.labels[i])


def timm_transform(data_config: dnax.DataConfig, *, augment: bool = False, **kwargs: Any) -> Any:
    """timm's transform for PIL images under ``data_config`` (train-time when ``augment``)."""
    from timm.data import create_transform

    return create_transform(input_size=data_config.input_size, is_training=augment,
                            mean=data_config.mean, std=data_config.std,
                            interpolation=data_config.interpolation,
                            crop_pct=data_config.crop_pct, **kwargs)
