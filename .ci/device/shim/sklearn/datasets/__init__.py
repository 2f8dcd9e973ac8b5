"""``load_digits`` as scikit-learn 1.x returns it (images, data, target), read from the same
file: ``digits.csv.gz``, a copy of scikit-learn's ``sklearn/datasets/data/digits.csv.gz`` (the UCI
optical recognition of handwritten digits test set: 1,797 images of 8x8 pixels, 64 values 0..16
then the class per row). Checked against scikit-learn by tests/cli/test_bench_all.py."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np

DIGITS = Path(__file__).with_name("digits.csv.gz")


def load_digits(*, n_class: int = 10) -> SimpleNamespace:
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    target = rows[:, -1].astype(int, copy=False)
    data = rows[:, :-1]
    keep = target < n_class
    data, target = data[keep], target[keep]
    return SimpleNamespace(data=data, target=target, images=data.reshape(-1, 8, 8),
                           target_names=np.arange(10))
