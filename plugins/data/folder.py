"""ImageNet-style image folders: ``root/train/<class>/*`` and ``root/val/<class>/*``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from attrs import field, frozen

import dnax

from .common import fraction, limit_indices, split_heldout, timm_transform

#: file endings read as images (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SALT = {"train": 0, "heldout": 1, "val": 2}


@frozen
class FolderConfig:
    """Class folders under train/ and val/; a seeded share of train/ is held out for ranking."""

    root: Path = field(metadata={"help": "folder holding the train and val class folders"})
    train_dir: str = field(default="train", metadata={"help": "train folder name under root"})
    val_dir: str = field(default="val", metadata={"help": "val folder name under root"})
    heldout_fraction: float = field(default=0.1, validator=fraction, metadata={
        "help": "share of train/ images held out of training for ranking candidates"})
    heldout_size: int = field(default=0, validator=dnax.non_negative, metadata={
        "help": "exact number of held-out images (overrides heldout_fraction when > 0)"})
    limit: int | None = field(default=None, validator=dnax.positive,
                              metadata={"help": "at most this many images per split (quick runs)"})
    seed: int = field(default=0, validator=dnax.non_negative,
                      metadata={"help": "seed of the split into train / heldout"})
    hflip: float = field(default=0.5, validator=fraction,
                         metadata={"help": "probability of a horizontal flip when augmenting"})
    scale: tuple[float, float] = field(default=(0.08, 1.0), validator=dnax.positive, metadata={
        "help": "area range of timm's random-resized crop when augmenting"})


def class_folders(folder: Path) -> list[str]:
    """The sorted class folder names of ``folder`` (hidden ones left out)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_problems(folder: Path, classes: list[str], found: list[str], split: str) -> list[str]:
    """One line per mismatch of ``folder``'s classes (``found``) with train's ``classes``."""
    missing = [c for c in classes if c not in found]
    extra = [c for c in found if c not in classes]
    return ([f"{folder}: lacks {len(missing)} of the train folder's {len(classes)} classes "
             f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): its {split} "
             "top-1 would leave them out"] if missing else []) + (
        [f"{folder}: {len(extra)} classes the train folder lacks ({', '.join(extra[:5])}"
         f"{', ...' if len(extra) > 5 else ''})"] if extra else [])


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """The class names (sorted sub-folders, or ``classes``), image paths and labels of
    ``folder``; a missing folder, an empty class, a missing or an unknown class is a
    DataError."""
    if not folder.is_dir():
        raise dnax.DataError(f"{folder}: no such folder")
    found = class_folders(folder)
    if not found:
        raise dnax.DataError(f"{folder}: no class folders")
    if classes is None:
        classes = found
    elif problems := class_problems(folder, classes, found, folder.name):
        raise dnax.DataError(problems)
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            continue
        files = sorted(p for p in cdir.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise dnax.DataError(f"{cdir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return classes, paths, labels


class ImageFiles(torch.utils.data.Dataset):
    """Image files read with PIL as RGB (grey becomes 3 channels), then ``transform``."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Any):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as e:  # PIL raises many kinds for truncated or foreign files
            raise dnax.DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
        return self.transform(image), self.labels[i]


class Folder(dnax.DataSource):
    """Your own images in ImageNet layout: ``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``.

    Classes are the sorted folder names under train/. Images go through timm's transforms for the
    teacher's data config (random-resized crop and flip when augmenting). A seeded share of
    train/ is held out for ranking and never trained on.
    """

    Config = FolderConfig

    @classmethod
    def check(cls, config: FolderConfig, pipeline: Any, registry: Any) -> list[str]:
        """The val folder's classes against the train folder's (only folder names are read)."""
        train, val = Path(config.root) / config.train_dir, Path(config.root) / config.val_dir
        if not (train.is_dir() and val.is_dir()):
            return []  # the data stage names a missing folder
        return [f"val_dir: {p}" for p in
                class_problems(val, class_folders(train), class_folders(val), "val")]

    @cached_property
    def _train(self) -> tuple[list[str], list[Path], list[int], dict[str, np.ndarray]]:
        c = self.config
        classes, paths, labels = scan(Path(c.root) / c.train_dir)
        train, heldout = split_heldout(len(paths), seed=c.seed, fraction=c.heldout_fraction,
                                       size=c.heldout_size)
        return classes, paths, labels, {"train": train, "heldout": heldout}

    @property
    def classes(self) -> list[str]:
        return self._train[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, split: dnax.Split) -> tuple[list[Path], list[int]]:
        """The image paths and labels of ``split`` (after ``limit``)."""
        c = self.config
        if split == "val":
            _, paths, labels = scan(Path(c.root) / c.val_dir, self.classes)
            idx = np.arange(len(paths))
        elif split in ("train", "heldout"):
            _, paths, labels, splits = self._train
            idx = splits[split]
        else:
            raise dnax.DataError(f"{c.root}: unknown split {split!r} (train, heldout, val)")
        idx = limit_indices(idx, c.limit, seed=c.seed, salt=_SALT[split])
        return [paths[i] for i in idx], [int(labels[i]) for i in idx]

    def dataset(self, split: dnax.Split, data_config: dnax.DataConfig, *,
                augment: bool = False) -> ImageFiles:
        c = self.config
        kw = {"hflip": c.hflip, "scale": c.scale} if augment else {}
        return ImageFiles(*self.files(split), timm_transform(data_config, augment=augment, **kw))


@dnax.hookimpl
def dnax_register_data(register):
    register("folder", Folder)
