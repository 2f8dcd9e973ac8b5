"""A data source: scikit-learn's handwritten digits, three disjoint splits cut by position."""

import torch
import torch.nn.functional as F
from attrs import field, frozen

import dnax

SPLITS = ("train", "heldout", "val")


@frozen
class DigitsConfig:
    """The first 3 x per_split images of load_digits: train, then heldout, then val."""

    per_split: int = field(default=64, validator=dnax.positive,
                           metadata={"help": "images in each split"})


class SmallDigits(dnax.DataSource):
    """8x8 grey digits resized, repeated to the teacher's channels and normalised."""

    Config = DigitsConfig

    @property
    def num_classes(self) -> int:
        return 10

    def dataset(self, split, data_config, *, augment=False):
        from sklearn.datasets import load_digits

        if split not in SPLITS:
            raise dnax.DataError(f"small-digits: no split {split!r} (one of {', '.join(SPLITS)})")
        digits, n = load_digits(), self.config.per_split
        if 3 * n > len(digits.target):
            raise dnax.DataError(f"$.data.per_split: {n} x 3 splits > {len(digits.target)} images")
        start = SPLITS.index(split) * n
        x = torch.tensor(digits.images[start:start + n], dtype=torch.float32)[:, None] / 16
        channels, *size = data_config.input_size
        x = F.interpolate(x, size=size, mode="bilinear").expand(-1, channels, -1, -1)
        mean, std = (torch.tensor(v)[:, None, None] for v in (data_config.mean, data_config.std))
        labels = torch.tensor(digits.target[start:start + n])
        return torch.utils.data.TensorDataset((x - mean) / std, labels)


@dnax.hookimpl
def dnax_register_data(register):
    register("small-digits", SmallDigits)
