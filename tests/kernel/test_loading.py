"""In-memory data gathered as whole batches on the device, worker counts, and loader settings
left out of stage hashes; checked against the per-image path, numpy slicing and torch's own
DataLoader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import dnax
from dnax.loading import DeviceBatches, batches, resolve_workers
from dnax.plugins.data import common
from dnax.plugins.data.common import ArrayDataset, random_shifts

DC = dnax.DataConfig(input_size=(3, 12, 12), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                     interpolation="bilinear", crop_pct=1.0)


def _images(n: int = 40, side: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(3))


def test_batch_equals_hand_normalised_images():
    images = _images()
    ds = ArrayDataset(images, np.arange(40) % 7, DC)
    idx = [5, 0, 39, 5]
    x, y = ds.batch(torch.tensor(idx))
    grey = images[idx].double() / 255.0  # by hand: unit scale, 3 channels, (x - mean) / std
    want = torch.stack([(grey - m) / s for m, s in zip(DC.mean, DC.std, strict=True)], 1)
    assert x.shape == (4, 3, 12, 12) and x.dtype == torch.float32
    torch.testing.assert_close(x.double(), want, rtol=1e-6, atol=1e-6)
    assert y.tolist() == [5, 0, 4, 5]


@pytest.mark.parametrize("cached", [True, False])
def test_batch_equals_per_image_items_when_resized(monkeypatch, cached):
    if not cached:  # too large to resize up front: the batch resizes on the device
        monkeypatch.setattr(common, "CACHE_BYTES", 0)
    ds = ArrayDataset(_images(side=8), np.zeros(40), DC)
    assert ds.resized is cached
    idx = [1, 2, 3, 30]
    x, _ = ds.batch(torch.tensor(idx))
    ref = torch.stack([ds[i][0] for i in idx])
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)


def test_random_shifts_are_zero_filled_moves_of_each_image():
    pad = 2
    x = torch.rand(300, 2, 5, 6, generator=torch.Generator().manual_seed(0)) + 0.5
    torch.manual_seed(1)
    out = random_shifts(x, pad).numpy()
    seen = set()
    for b in range(len(x)):
        padded = np.pad(x[b].numpy(), ((0, 0), (pad, pad), (pad, pad)))  # numpy, not torch
        hits = [(i, j) for i, j in itertools.product(range(2 * pad + 1), repeat=2)
                if np.array_equal(padded[:, i:i + 5, j:j + 6], out[b])]
        assert len(hits) == 1, b  # positive pixels: exactly one offset fits
        seen.add(hits[0])
    assert len(seen) == (2 * pad + 1) ** 2  # every offset is drawn, rows and columns apart


def test_augmented_batch_equals_the_per_image_path_under_one_seed():
    ds = ArrayDataset(_images(n=16, side=20), np.arange(16), DC, augment=True)
    torch.manual_seed(5)
    x, _ = ds.batch(torch.arange(16))
    torch.manual_seed(5)
    ref = torch.stack([ds[i][0] for i in range(16)])  # random_shift, image by image
    torch.testing.assert_close(x, ref)


def test_augmented_batch_shifts_within_a_tenth_of_the_side():
    ds = ArrayDataset(_images(n=8, side=20), np.zeros(8), DC, augment=True)  # 12 px: shift 1
    torch.manual_seed(0)
    x, _ = ds.batch(torch.arange(8))
    plain = ArrayDataset(_images(n=8, side=20), np.zeros(8), DC).batch(torch.arange(8))[0]
    zero = torch.tensor([(0 - m) / s for m, s in zip(DC.mean, DC.std, strict=True)])
    for b in range(8):
        fits = []
        for i, j in itertools.product(range(3), repeat=2):
            shifted = zero[:, None, None].expand(3, 14, 14).clone()
            shifted[:, 1:13, 1:13] = plain[b]
            fits.append(torch.allclose(shifted[:, i:i + 12, j:j + 12], x[b], atol=1e-6))
        assert any(fits), b


def test_batches_follow_the_dataloaders_order():
    ds = ArrayDataset(_images(n=37), np.arange(37), DC)
    ours = batches(ds, "cpu", batch_size=8, shuffle=True, drop_last=True,
                   generator=torch.Generator().manual_seed(11))
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(11))
    theirs = torch.utils.data.DataLoader(  # the order is the sampler's
        ds, batch_sampler=torch.utils.data.BatchSampler(sampler, 8, drop_last=True))
    assert isinstance(ours, DeviceBatches) and len(ours) == len(theirs) == 4
    for (x, y), (x2, y2) in zip(ours, theirs, strict=True):
        assert y.tolist() == y2.tolist()
        torch.testing.assert_close(x, x2)
    assert len({i for _, y in ours for i in y.tolist()}) == 32  # each image at most once
    shard = torch.utils.data.DistributedSampler(ds, 2, 1, shuffle=True, seed=5)
    sharded = batches(ds, "cpu", batch_size=4, sampler=shard)
    assert sharded.sampler is shard  # what EpochLoop calls set_epoch on
    shard.set_epoch(3)
    want = list(torch.utils.data.DistributedSampler(ds, 2, 1, shuffle=True, seed=5))
    assert [i for _, y in sharded for i in y.tolist()] != want  # epoch 3 is not epoch 0
    fixed = batches(ds, "cpu", batch_sampler=[[3, 1], [2]])
    assert [y.tolist() for _, y in fixed] == [[3, 1], [2]]


def test_files_go_through_workers_in_the_same_order():
    class Files(torch.utils.data.Dataset):  # no batch(): not in memory
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((2,), float(i)), i

    loader = batches(Files(), "cpu", batch_size=4, num_workers=2)
    assert isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers == 2
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches(Files(), "cpu").num_workers == 0  # "auto" on CPU


@pytest.mark.parametrize(("value", "device", "cores", "procs", "want"), [
    ("auto", "cpu", 16, 1, 0), ("auto", "cuda", 16, 1, 8), ("auto", "cuda:0", 16, 4, 4),
    ("auto", "cuda", 6, 1, 6), ("auto", "cuda", 3, 4, 0), (3, "cpu", 16, 1, 3),
    (0, "cuda", 16, 1, 0)])
def test_resolve_workers(monkeypatch, value, device, cores, procs, want):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert resolve_workers(value, device, procs) == want


def _tiny(tmp_path, **trainer):
    import faultkit

    return faultkit.write_pipeline(tmp_path / "p.toml", faultkit.pipeline(trainer=trainer))


@pytest.mark.parametrize(("value", "problem"), [
    ("many", 'expected "auto" or an int'), (-1, "must be"), (True, 'expected "auto" or an int'),
    (1.5, 'expected "auto" or an int')])
def test_num_workers_refused_with_one_line(tmp_path, registry, value, problem):
    with pytest.raises(dnax.ConfigError) as err:
        dnax.load_pipeline(_tiny(tmp_path, num_workers=value), registry)
    line = str(err.value)
    assert "num_workers" in line and problem in line and "\n" not in line


def test_num_workers_leaves_stage_hashes_alone(tmp_path, registry):
    from dnax.runner import stage_hashes

    hashes = [stage_hashes(dnax.load_pipeline(_tiny(tmp_path, num_workers=v), registry))
              for v in ("auto", 0, 4)]
    assert hashes[0] == hashes[1] == hashes[2]
    other = stage_hashes(dnax.load_pipeline(_tiny(tmp_path, batch_size=3), registry))
    assert other["train"] != hashes[0]["train"] and other["teacher"] == hashes[0]["teacher"]


def test_record_hashed_with_num_workers_is_reused_not_redone(tmp_path):
    from dnax.rundir import RunDir
    from dnax.staging import plan_stages

    class Stage:
        name = "train"

    rd = RunDir(tmp_path)
    now = {"trainer": {"plugin": "distill", "epochs": 2}}
    old = {"trainer": {"plugin": "distill", "epochs": 2, "num_workers": 0}}
    rd.write_json("stages/train.json", {"hash": "from-an-older-dnax", "config": old,
                                        "result": {}}, kind="stage")
    runtime = {"trainer.num_workers"}
    plan = plan_stages(rd, [Stage], {"train": now}, {"train": "new"}, runtime=runtime)
    assert [p.action for p in plan] == ["reuse"]
    changed = {"trainer": {"plugin": "distill", "epochs": 3}}
    with pytest.raises(dnax.ConfigError, match=r"trainer\.epochs"):
        plan_stages(rd, [Stage], {"train": changed}, {"train": "new"}, runtime=runtime)
