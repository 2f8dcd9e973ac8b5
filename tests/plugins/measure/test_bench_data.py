"""``dnax bench data``: the JPEG folder it makes, and its report's figures and ratio."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dnax.cli.app import app
from dnax.plugins.data.fashion_mnist import DEBIAN_ROOT
from dnax.plugins.measure.bench_data import jpeg_folder

needs_fmnist = pytest.mark.skipif(not (DEBIAN_ROOT / "train-labels-idx1-ubyte.gz").exists(),
                                  reason="needs dataset-fashion-mnist")


@needs_fmnist
def test_jpeg_folder_holds_the_first_images_by_class(tmp_path):
    jpeg_folder(tmp_path, images=30, size=40)
    with gzip.open(DEBIAN_ROOT / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:30]
    files = sorted((tmp_path / "train").rglob("*.jpg"))
    assert Counter(p.parent.name for p in files) == Counter(f"class{v}" for v in labels)
    with Image.open(files[0]) as im:
        assert im.size == (40, 40) and im.mode == "RGB"


@needs_fmnist
@pytest.mark.slow
def test_bench_data_report(tmp_path):
    out = tmp_path / "data.json"
    res = CliRunner().invoke(app, ["bench", "data", "--resolution", "32", "--batch-size", "4",
                                   "--steps", "2", "--warmup", "1", "--workers", "1",
                                   "--device", "cpu", "--threads", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    f = report["figures"]
    assert all(v > 0 for v in f.values())
    ratio = report["ratios"]["fed_over_resident"]
    assert ratio["value"] == pytest.approx(f["fed_images_per_s"] / f["resident_images_per_s"])
    assert report["details"]["workers"] == 1 and report["details"]["images"] == 16
    gathered = report["ratios"]["gathered_over_per_image"]["value"]
    assert gathered == pytest.approx(f["gathered_images_per_s"] / f["per_image_images_per_s"])
    assert report["machine"]["torch_threads"] == 1


def test_bench_data_refuses_bad_options():
    res = CliRunner().invoke(app, ["bench", "data", "--workers", "many", "--batch-size", "0"])
    assert res.exit_code == 2
    assert "--workers" in res.output and "--batch-size" in res.output
