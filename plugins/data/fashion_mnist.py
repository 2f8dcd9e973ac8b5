"""Fashion-MNIST (60,000 + 10,000 grey 28x28 images, 10 classes) from the Debian package."""

from __future__ import annotations

import gzip
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from attrs import field, frozen

import dnax

from .common import ArrayDataset, fraction, limit_indices, split_heldout

#: where the Debian package dataset-fashion-mnist puts its files
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
_SALT = {"train": 0, "heldout": 1, "val": 2}


@frozen
class FashionMNISTConfig:
    """Fashion-MNIST's IDX files; train is split by seed into train / heldout, t10k is val."""

    root: Path | None = field(default=None, metadata={
        "help": "folder of the gzip IDX files (default: /usr/share/datasets/fashion-mnist)"})
    heldout_fraction: float = field(default=0.1, validator=fraction, metadata={
        "help": "share of the train file held out of training for ranking candidates"})
    heldout_size: int = field(default=0, validator=dnax.non_negative, metadata={
        "help": "exact number of held-out images (overrides heldout_fraction when > 0)"})
    limit: int | None = field(default=None, validator=dnax.positive,
                              metadata={"help": "at most this many images per split (quick runs)"})
    seed: int = field(default=0, validator=dnax.non_negative,
                      metadata={"help": "seed of the split into train / heldout"})


def read_idx(path: Path, offset: int) -> np.ndarray:
    """The bytes of a gzip IDX file after its header; a DataError names a missing or bad file."""
    if not path.exists():
        hint = " (apt-get install dataset-fashion-mnist)" if path.parent == DEBIAN_ROOT else ""
        raise dnax.DataError(f"{path}: missing{hint}")
    try:
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    except (OSError, EOFError, ValueError) as e:
        raise dnax.DataError(f"{path}: not a readable gzip IDX file ({e})") from None


class FashionMNIST(dnax.DataSource):
    """Zalando's Fashion-MNIST: 28x28 grey clothes in 10 classes, resized for the teacher.

    Reads the files of the Debian package dataset-fashion-mnist. train-*.gz gives train and a
    seeded held-out share (never overlapping it); t10k-*.gz is val.
    """

    Config = FashionMNISTConfig

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def root(self) -> Path:
        return self.config.root or DEBIAN_ROOT

    def _read(self, prefix: str) -> tuple[torch.Tensor, np.ndarray]:
        images = read_idx(self.root / f"{prefix}-images-idx3-ubyte.gz", 16)
        labels = read_idx(self.root / f"{prefix}-labels-idx1-ubyte.gz", 8)
        if len(labels) == 0 or images.size != len(labels) * 28 * 28:
            raise dnax.DataError(f"{self.root / prefix}-*.gz: {images.size} image bytes for "
                                 f"{len(labels)} labels (expected 28x28 each)")
        return torch.from_numpy(images.reshape(-1, 28, 28).copy()), labels.astype(np.int64)

    @cached_property
    def _train(self) -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray]]:
        images, labels = self._read("train")
        c = self.config
        train, heldout = split_heldout(len(labels), seed=c.seed, fraction=c.heldout_fraction,
                                       size=c.heldout_size)
        return images, labels, {"train": train, "heldout": heldout}

    @cached_property
    def _val(self) -> tuple[torch.Tensor, np.ndarray]:
        return self._read("t10k")

    def indices(self, split: dnax.Split) -> np.ndarray:
        """Which images of the train file (t10k for val) form ``split`` (after ``limit``)."""
        if split == "val":
            idx = np.arange(len(self._val[1]))
        elif split in ("train", "heldout"):
            idx = self._train[2][split]
        else:
            raise dnax.DataError(f"fashion_mnist: unknown split {split!r} (train, heldout, val)")
        return limit_indices(idx, self.config.limit, seed=self.config.seed, salt=_SALT[split])

    def dataset(self, split: dnax.Split, data_config: dnax.DataConfig, *,
                augment: bool = False) -> ArrayDataset:
        idx = self.indices(split)
        images, labels = self._val if split == "val" else self._train[:2]
        return ArrayDataset(images[idx], labels[idx], data_config, augment=augment)


@dnax.hookimpl
def dnax_register_data(register):
    register("fashion_mnist", FashionMNIST)
