"""Every stage on CUDA (marker ``cuda``; on a machine without a GPU these skip through
conftest.ALLOWED_SKIPS). `.ci/device/run.sh` runs them first on a lent GPU.

``DNAX_CUDA_TESTS_DEVICE=cpu`` runs them on the CPU through the same code (gloo for NCCL,
float32 for autocast): a dry run of the tests themselves where no GPU is lent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import faultkit
import numpy as np
import pytest
import torch
from scipy import stats

import dnax

DEVICE = os.environ.get("DNAX_CUDA_TESTS_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]


def _cuda_pipeline(**tables):
    config = faultkit.pipeline(pipeline={"device": DEVICE, "deterministic": False},
                               trainer={"amp": "bf16"}, evaluator={"amp": True},
                               retrainer={"amp": True, "onnx": True, "epochs": 2})
    for name, changes in tables.items():
        config[name].update(changes)
    return config


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda")
    toml = faultkit.write_pipeline(folder / "tiny.toml", _cuda_pipeline())
    return dnax.run_pipeline(toml, folder / "run"), folder / "run"


def test_every_stage_runs_under_amp_on_cuda(cuda_run):
    run, _ = cuda_run
    results = run.results
    assert set(results) == set(faultkit.STAGES)
    for ranking in dnax.load_run(cuda_run[1]).rankings():
        for values in ranking.scores.values():
            assert np.isfinite(values).all()
    sel = results["select"]
    assert all(sel.costs[m] <= v for m, v in sel.budgets.items())
    assert 10 < results["retrain"].metrics["top1"] <= 100  # above chance (10 classes), in %


def test_export_of_a_cuda_trained_model_matches_onnxruntime(cuda_run):
    import onnxruntime

    _, folder = cuda_run
    model = dnax.load_model(folder / "model").float().eval().cpu()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    session = onnxruntime.InferenceSession(str(folder / "model" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tree_walk_under_autocast_ranks_as_float32():
    from dnax.plugins.evaluators.tree import make_groups, plain_cell, score_weights, walk_cell
    from dnax.plugins.measure.bench_rank import bench_supernet

    torch.manual_seed(0)
    net = bench_supernet(3, 6).to(DEVICE).eval()
    xs = [torch.randn(32, 32, 16, 16, device=DEVICE) for _ in range(2)]
    ts = [torch.randn(32, 48, 8, 8, device=DEVICE) for _ in range(2)]
    groups = make_groups(xs, ts, recal="same")
    weights = score_weights(ts)
    fp32 = walk_cell(net.cells[0], groups, weights).double().cpu()
    plain = plain_cell(net, 0, groups, weights).double().cpu()
    torch.testing.assert_close(fp32, plain, rtol=1e-5, atol=0)
    amp = walk_cell(net.cells[0], groups, weights, amp=True).double().cpu()
    for k in range(fp32.shape[1]):
        assert stats.spearmanr(fp32[:, k], amp[:, k]).statistic >= 0.999


def test_in_memory_batches_on_cuda_equal_cpu_ones():
    from dnax.plugins.data.digits import Digits, DigitsConfig

    source = Digits(DigitsConfig(limit=64))
    dc = dnax.DataConfig(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                         interpolation="bicubic", crop_pct=1.0)
    idx = torch.arange(0, 64, 3)
    x_cpu, y_cpu = source.dataset("train", dc).batch(idx)
    loader = dnax.batches(source.dataset("train", dc), DEVICE, batch_size=64)
    x, y = source.dataset("train", dc).to(DEVICE).batch(idx)
    assert x.device.type == next(iter(loader))[0].device.type == DEVICE
    torch.testing.assert_close(x.cpu(), x_cpu, rtol=1e-5, atol=1e-5)
    assert y.cpu().tolist() == y_cpu.tolist()


def test_file_loaders_on_cuda_start_workers_and_pin_memory():
    from dnax.loading import resolve_workers

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((2,), float(i)), i

    loader = dnax.batches(Files(), DEVICE, batch_size=4)
    cuda = DEVICE == "cuda"
    assert loader.num_workers == resolve_workers("auto", DEVICE) and loader.pin_memory == cuda
    assert loader.num_workers > 0 or not cuda
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.slow
def test_torchrun_one_process_nccl_on_cuda(tmp_path):
    toml = faultkit.write_pipeline(tmp_path / "tiny.toml", _cuda_pipeline(
        retrainer={"epochs": 1, "onnx": False}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
                          "--master-port", str(port), "-m", "dnax", "run", str(toml),
                          "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, env={**os.environ, **faultkit.ENV},
                         timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run = dnax.load_run(tmp_path / "run")
    assert len(run.rankings()) == 2 and run.selection is not None
