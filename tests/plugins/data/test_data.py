"""Data sources on real images: scikit-learn digits, Fashion-MNIST, and a folder of PNG files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dnax
from dnax.plugins.data import fashion_mnist
from dnax.plugins.data.digits import Digits, DigitsConfig
from dnax.plugins.data.fashion_mnist import FashionMNIST, FashionMNISTConfig
from dnax.plugins.data.folder import Folder, FolderConfig

DC = dnax.DataConfig(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), interpolation="bicubic", crop_pct=1.0)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(DC.std)[:, None, None] + torch.tensor(DC.mean)[:, None, None]


def check_item(ds: torch.utils.data.Dataset, num_classes: int) -> None:
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < num_classes
    pixels = unnormalise(x)
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    assert pixels.max() > 0.5  # a real image, not a blank one


# --- digits ----------------------------------------------------------------------------------

def test_digits_splits_are_disjoint_seeded_and_complete():
    data = Digits(DigitsConfig())
    parts = {s: data.indices(s) for s in ("train", "heldout", "val")}
    assert sum(len(p) for p in parts.values()) == 1797
    assert len(np.unique(np.concatenate(list(parts.values())))) == 1797
    assert len(parts["val"]) == round(0.2 * 1797)
    assert len(parts["heldout"]) == round(0.15 * (1797 - len(parts["val"])))
    again = Digits(DigitsConfig())
    assert all((again.indices(s) == p).all() for s, p in parts.items())
    other = Digits(DigitsConfig(seed=1))
    assert not np.array_equal(other.indices("heldout"), parts["heldout"])
    assert len(Digits(DigitsConfig(heldout_size=100)).indices("heldout")) == 100


def test_digits_items_grey_to_three_channels_resized_and_normalised():
    data = Digits(DigitsConfig(limit=50))
    ds = data.dataset("train", DC)
    assert len(ds) == 50 and data.num_classes == 10
    check_item(ds, 10)
    x, _ = ds[3]
    grey = unnormalise(x)  # grey repeated, not coloured
    assert torch.allclose(grey[0], grey[1], atol=1e-5)
    assert torch.allclose(grey[0], grey[2], atol=1e-5)
    aug = data.dataset("train", DC, augment=True)
    assert aug[0][0].shape == (3, 32, 32)
    labels = [data.dataset("val", DC)[i][1] for i in range(50)]
    assert len(set(labels)) > 5


def test_digits_limit_never_mixes_splits():
    data = Digits(DigitsConfig(limit=30))
    train, held = set(data.indices("train")), set(data.indices("heldout"))
    assert len(train) == len(held) == 30 and not train & held


# --- Fashion-MNIST ---------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(
    not (fashion_mnist.DEBIAN_ROOT / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@needs_fashion
def test_fashion_mnist_loads_with_heldout_from_train_and_t10k_as_val():
    data = FashionMNIST(FashionMNISTConfig())
    train, held = data.indices("train"), data.indices("heldout")
    assert len(train) == 54000 and len(held) == 6000 and not set(train) & set(held)
    assert len(data.indices("val")) == 10000
    small = FashionMNIST(FashionMNISTConfig(limit=20))
    for split in ("train", "heldout", "val"):
        ds = small.dataset(split, DC)
        assert len(ds) == 20
        check_item(ds, 10)
    assert len({small.dataset("val", DC)[i][1] for i in range(20)}) > 3


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "fashion-mnist")
    with pytest.raises(dnax.DataError, match="apt-get install dataset-fashion-mnist") as e:
        FashionMNIST(FashionMNISTConfig()).dataset("train", DC)
    assert str(tmp_path / "fashion-mnist") in str(e.value)
    with pytest.raises(dnax.DataError, match=re.escape(str(tmp_path / "elsewhere"))):
        FashionMNIST(FashionMNISTConfig(root=tmp_path / "elsewhere")).dataset("val", DC)


def test_fashion_mnist_corrupt_file_is_a_data_error(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not gzip")
    with pytest.raises(dnax.DataError, match=re.escape("t10k-images-idx3-ubyte.gz")):
        FashionMNIST(FashionMNISTConfig(root=tmp_path)).dataset("val", DC)


# --- folder ----------------------------------------------------------------------------------

def write_tree(root: Path, classes=(0, 1, 2), per_class=(12, 4)) -> Path:
    """An ImageNet-style tree of real digits saved as PNG (some grey, some RGB)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c in classes:
            imgs = d.images[d.target == c]
            offset = 0 if split == "train" else per_class[0]
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (imgs[offset + i] * 255 / 16).astype(np.uint8)
                im = Image.fromarray(a).resize((24, 24))
                (im.convert("RGB") if i % 2 else im).save(folder / f"{i:03d}.png")
    return root


def test_folder_tree_of_real_pngs_loads(tmp_path):
    data = Folder(FolderConfig(root=write_tree(tmp_path), heldout_fraction=0.25))
    assert data.num_classes == 3 and data.classes == ["class_0", "class_1", "class_2"]
    train, held = data.files("train"), data.files("heldout")
    assert len(train[0]) == 27 and len(held[0]) == 9 and not set(train[0]) & set(held[0])
    val = data.dataset("val", DC)
    assert len(val) == 12 and sorted({val[i][1] for i in range(12)}) == [0, 1, 2]
    for split in ("train", "heldout", "val"):
        check_item(data.dataset(split, DC), 3)
    x, _ = data.dataset("train", DC)[0]  # a grey PNG comes out as 3 equal channels
    assert torch.allclose(unnormalise(x)[0], unnormalise(x)[2], atol=1e-5)
    aug = data.dataset("train", DC, augment=True)
    assert aug[1][0].shape == (3, 32, 32)
    assert len(Folder(FolderConfig(root=tmp_path, limit=5)).dataset("train", DC)) == 5


def test_folder_missing_root_or_split_names_the_path(tmp_path):
    with pytest.raises(dnax.DataError, match=re.escape(str(tmp_path / "nope" / "train"))):
        _ = Folder(FolderConfig(root=tmp_path / "nope")).num_classes
    write_tree(tmp_path)
    for f in (tmp_path / "val").rglob("*.png"):
        f.unlink()
    for d in (tmp_path / "val").iterdir():
        d.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(dnax.DataError, match=re.escape(str(tmp_path / "val"))):
        Folder(FolderConfig(root=tmp_path)).dataset("val", DC)


def test_folder_empty_class_names_it(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "train" / "class_9").mkdir()
    (tmp_path / "train" / "class_9" / "notes.txt").write_text("no images here")
    with pytest.raises(dnax.DataError, match=re.escape(str(tmp_path / "train" / "class_9"))) as e:
        _ = Folder(FolderConfig(root=tmp_path)).num_classes
    assert len(e.value.problems) == 1


def test_folder_unreadable_image_names_the_file(tmp_path):
    write_tree(tmp_path, per_class=(2, 1))
    bad = tmp_path / "train" / "class_1" / "zzz.png"
    bad.write_bytes(b"this is not a PNG")
    data = Folder(FolderConfig(root=tmp_path, heldout_fraction=0.0))
    assert bad in data.files("train")[0]
    ds = data.dataset("train", DC)
    with pytest.raises(dnax.DataError, match=re.escape(str(bad))):
        for i in range(len(ds)):
            ds[i]


def test_folder_val_class_unknown_to_train(tmp_path):
    write_tree(tmp_path)
    extra = tmp_path / "val" / "class_7"
    extra.mkdir()
    with pytest.raises(dnax.DataError, match=re.escape(
            f"{tmp_path / 'val'}: 1 classes the train folder lacks (class_7)")):
        Folder(FolderConfig(root=tmp_path)).dataset("val", DC)
    problems = Folder.check(FolderConfig(root=tmp_path), None, None)  # before any training
    assert problems == [f"val_dir: {tmp_path / 'val'}: 1 classes the train folder lacks "
                        "(class_7)"]


def test_folder_val_lacking_a_class_of_train_is_refused(tmp_path):
    """A val folder without one of train's classes would measure top-1 over the rest."""
    write_tree(tmp_path)
    shutil.rmtree(tmp_path / "val" / "class_1")
    want = (f"{tmp_path / 'val'}: lacks 1 of the train folder's 3 classes (class_1): its val "
            "top-1 would leave them out")
    assert Folder.check(FolderConfig(root=tmp_path), None, None) == [f"val_dir: {want}"]
    with pytest.raises(dnax.DataError, match=re.escape(want)):
        Folder(FolderConfig(root=tmp_path)).dataset("val", DC)
