"""``torchrun --nproc-per-node 2 -m dnax run`` on the tiny pipeline (gloo on CPU): the same plan
as one process, rankings that agree with the one-process run's, a feasible selection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import faultkit
import pytest
from scipy import stats

import dnax


@pytest.mark.slow
def test_torchrun_two_processes_end_to_end(tmp_path):
    config = faultkit.pipeline(retrainer={"epochs": 1})
    toml = faultkit.write_pipeline(tmp_path / "tiny.toml", config)
    env = {**os.environ, **faultkit.ENV}
    with socket.socket() as s:  # a free port (torchrun's port 0 does not rendezvous)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                          "2", "--master-port", str(port), "-m", "dnax", "run", str(toml),
                          "--run-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    two = dnax.load_run(tmp_path / "two")
    one = dnax.run_pipeline(toml, tmp_path / "one")
    assert two.results["teacher"].blocks == one.results["teacher"].blocks
    assert dnax.plan(toml).to_json() == dnax.plan(toml).to_json()
    for a, b in zip(two.rankings(), one.rankings(), strict=True):
        assert [c.arch for c in a.candidates] == [c.arch for c in b.candidates]
        tau = stats.kendalltau(a.scores["nmae"], b.scores["nmae"]).statistic
        assert tau > 0.5, (a.block, tau)  # the same supernets, trained on two shards
    sel = two.selection
    assert sel is not None and all(sel.costs[m] <= v for m, v in sel.budgets.items())
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()
