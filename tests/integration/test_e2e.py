"""The real stack end to end (efficientnet, mbconv, distill, prefix, params + flops, exact,
timm) under a binding budget, checked against oracles of the test's own: brute force over the
stored rankings and costs, timm's and torch's counts on the exported model, onnxruntime."""

from __future__ import annotations

import itertools
from pathlib import Path

import faultkit
import numpy as np
import onnxruntime as ort
import pytest
import torch
from paths import EXAMPLES
from torch.utils.flop_counter import FlopCounterMode

import dnax

pytestmark = pytest.mark.slow  # runs the digits pipeline end to end



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = faultkit.pipeline(retrainer={"onnx": True, "recipe": "quick", "epochs": 8,
                                          "lr": 0.01, "ema_decay": 0.0})
    config["costs"] = [{"plugin": "params"}, {"plugin": "flops"}]
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    return dnax.run_pipeline(config, run_dir), run_dir


def _brute_force(rankings, fixed, budgets, key="nmae"):
    best = (np.inf, None)
    for choice in itertools.product(*(range(len(r.candidates)) for r in rankings)):
        costs = {m: fixed[m] + sum(float(np.asarray(r.costs[m])[i])
                                   for r, i in zip(rankings, choice, strict=True))
                 for m in fixed}
        if all(costs[m] <= b for m, b in budgets.items()):
            score = sum(float(r.scores[key][i]) for r, i in zip(rankings, choice, strict=True))
            best = min(best, (score, choice), key=lambda x: x[0])
    return best


def test_selection_is_the_brute_force_best_under_the_binding_budget(tiny_run):
    run, _ = tiny_run
    sel, rankings, fixed = run.selection, run.rankings(), run.fixed_costs
    budgets = {"params": 7000.0}
    assert sel.budgets == budgets and sel.optimal
    score, choice = _brute_force(rankings, fixed, budgets)
    assert tuple(sel.candidates) == choice and sel.score == pytest.approx(score, rel=1e-12)
    unbudgeted, _ = _brute_force(rankings, fixed, {})
    assert unbudgeted < sel.score  # the budget binds


def test_exported_model_is_the_selected_network(tiny_run):
    run, run_dir = tiny_run
    sel = run.selection
    model = dnax.load_model(run_dir / "model")
    meta = dnax.plugins.retrainers.export.load_meta(run_dir / "model")
    assert [tuple(s) for s in meta["arch_def"]] == [tuple(s) for s in sel.arch_def]
    # the space's arch strings of the chosen candidates, stage by stage after the fixed stem
    chosen = [r.candidates[i].arch for r, i in zip(run.rankings(), sel.candidates, strict=True)]
    assert [tuple(s) for s in sel.arch_def[1:]] == chosen
    assert sum(p.numel() for p in model.parameters()) == sel.costs["params"] <= 7000
    res = run.config["pipeline"]["resolution"]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, res, res))
    assert counter.get_total_flops() == sel.costs["flops"]


def test_onnx_agrees_and_the_network_learned(tiny_run):
    run, run_dir = tiny_run
    model = dnax.load_model(run_dir / "model")
    res = run.config["pipeline"]["resolution"]
    x = torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(run_dir / "model" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-3, atol=1e-4)
    top1 = run.results["retrain"].metrics["top1"]
    assert top1 >= 40.0, top1  # 10 digit classes: chance is 10 % (measured here: 60.7 %)


@pytest.mark.parametrize("toml", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_toml_validates(toml):
    if toml == "imagenet-paper.toml":  # needs ImageNet and B7 weights: test_paper_example.py
        assert (Path(__file__).parent / "test_paper_example.py").exists()
        return
    plan = dnax.plan(EXAMPLES / toml)
    assert plan.blocks and all(b.num_candidates > 0 for b in plan.blocks)
