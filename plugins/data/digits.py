"""scikit-learn's handwritten digits (1,797 grey 8x8 images, 10 classes), bundled offline."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from attrs import field, frozen

import dnax

from .common import ArrayDataset, fraction, limit_indices, split_heldout

_SALT = {"train": 0, "heldout": 1, "val": 2}


@frozen
class DigitsConfig:
    """scikit-learn's load_digits, split by seed into train / heldout / val."""

    val_fraction: float = field(default=0.2, validator=fraction,
                                metadata={"help": "share of all images kept for val (top-1)"})
    heldout_fraction: float = field(default=0.15, validator=fraction, metadata={
        "help": "share of the remaining images held out of training for ranking candidates"})
    heldout_size: int = field(default=0, validator=dnax.non_negative, metadata={
        "help": "exact number of held-out images (overrides heldout_fraction when > 0)"})
    limit: int | None = field(default=None, validator=dnax.positive,
                              metadata={"help": "at most this many images per split (quick runs)"})
    seed: int = field(default=0, validator=dnax.non_negative,
                      metadata={"help": "seed of the split into train / heldout / val"})


class Digits(dnax.DataSource):
    """UCI handwritten digits from scikit-learn: 8x8 grey images of 0-9, resized for the teacher.

    val is a seeded share of all images; heldout is a seeded share of the rest and never
    overlaps train. Small enough to run a whole pipeline on a laptop CPU.
    """

    Config = DigitsConfig

    @property
    def num_classes(self) -> int:
        return 10

    @cached_property
    def _arrays(self) -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.from_numpy(data.images.astype(np.float32) / 16.0)
        c = self.config
        rest, val = split_heldout(len(images), seed=c.seed, fraction=c.val_fraction, salt=7)
        train, heldout = split_heldout(len(rest), seed=c.seed, fraction=c.heldout_fraction,
                                       size=c.heldout_size)
        splits = {"train": rest[train], "heldout": rest[heldout], "val": val}
        return images, data.target, splits

    def indices(self, split: dnax.Split) -> np.ndarray:
        """Which of load_digits' images form ``split`` (after ``limit``)."""
        if split not in _SALT:
            raise dnax.DataError(f"digits: unknown split {split!r} (train, heldout, val)")
        return limit_indices(self._arrays[2][split], self.config.limit, seed=self.config.seed,
                             salt=_SALT[split])

    def dataset(self, split: dnax.Split, data_config: dnax.DataConfig, *,
                augment: bool = False) -> ArrayDataset:
        images, labels, _ = self._arrays
        idx = self.indices(split)
        return ArrayDataset(images[idx], labels[idx], data_config, augment=augment)


@dnax.hookimpl
def dnax_register_data(register):
    register("digits", Digits)
