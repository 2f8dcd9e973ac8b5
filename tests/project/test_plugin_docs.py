"""docs/plugins.md: the code it shows is exactly the code tested here, there is one example per
plugin interface, and each example runs for real (one pipeline of all eight, plus unit checks),
its answer checked against one worked out independently: by hand, by brute force, or by timm's
own forward."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import math
import re
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paths import EXAMPLE_PLUGIN, ROOT

import dnax
from dnax.interfaces import PLUGIN_KINDS
from dnax.plugins.toolkit.builder import build_network
from dnax.plugins.toolkit.supernet import check_supernet, load_supernet, metadata
from dnax.registry import Registry
from standins import SelectorContext

DOC = ROOT / "docs" / "plugins.md"
EXAMPLES = ROOT / "docs" / "examples" / "plugins"
PIPELINE = EXAMPLES / "pipeline.toml"
#: ``<!-- example: PATH -->`` right above a fenced block: the block must be PATH's text
MARKER = re.compile(r"<!-- example: (\S+) -->\n```(\w+)\n(.*?)^```$", re.S | re.M)
#: each example's module and the kind it registers
KINDS = {"data_source": "data", "teacher": "teacher", "space": "space", "trainer": "trainer",
         "evaluator": "evaluator", "cost_model": "costs", "selector": "selector",
         "retrainer": "retrainer"}


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUNNER = _load(EXAMPLES / "run.py", "dnax_plugin_examples_run")
EX = {name: RUNNER.load(name) for name in KINDS}


def _blocks(doc: str) -> dict[str, tuple[str, str]]:
    return {path: (lang, code) for path, lang, code in MARKER.findall(doc)}


# --- the page --------------------------------------------------------------------------------


def test_the_page_shows_exactly_the_tested_files():
    shown = _blocks(DOC.read_text())
    files = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".py", ".toml"))
    assert {f.name for f in files} == {*(f"{m}.py" for m in KINDS), "run.py", "pipeline.toml"}
    for f in files:
        assert f.relative_to(ROOT).as_posix() in shown, f"docs/plugins.md does not show {f}"
    for path, (lang, code) in shown.items():
        assert lang == {".py": "python", ".toml": "toml"}[Path(path).suffix], path
        assert code == (ROOT / path).read_text(), (
            f"docs/plugins.md: the block under <!-- example: {path} --> is not that file's text; "
            "paste the file")
    assert "tests/example_plugin/dnax_example/__init__.py" in shown  # the commands example
    # the check() quoted in section 3 is the selector example's
    quoted = re.search(r"```python\n(@classmethod\ndef check.*?)```", DOC.read_text(), re.S)
    assert textwrap.indent(quoted.group(1), "    ") in (EXAMPLES / "selector.py").read_text()


def test_the_kinds_table_is_plugin_kinds():
    rows = re.findall(r"^\| `(\[\[?\w+\]\]?)` \| `dnax\.(\w+)` \| `(\w+)` \| (.*?) \|",
                      DOC.read_text(), re.M)
    assert [(h, i, hook) for h, i, hook, _ in rows] == [
        (k.header, k.interface.__name__, k.hook) for k in PLUGIN_KINDS]
    assert [stage.strip("`") for *_, stage in rows if stage.startswith("`")] == [
        k.stage for k in PLUGIN_KINDS if k.stage]


def test_every_example_is_short():
    """Each plugin class is 10-40 lines of code (blank lines left out)."""
    for name, module in EX.items():
        src = Path(module.__file__).read_text()
        cls = re.search(r"^class \w+\(dnax\.\w+\):\n(?:(?:    .*)?\n)+", src, re.M).group(0)
        lines = [line for line in cls.splitlines() if line.strip()]
        assert 10 <= len(lines) <= 40, f"{name}: the plugin class has {len(lines)} lines"


def test_one_example_per_interface():
    reg = Registry.create(builtins=False, entry_points=False, plugins=list(EX.values()))
    assert reg.failures == []
    for kind in PLUGIN_KINDS:
        (entry,) = reg.tables[kind.name].values()
        assert issubclass(entry.cls, kind.interface)
        assert entry.cls.__module__ == f"dnax_plugin_examples.{_module_of(kind.name)}"
        assert attrs.has(entry.config_cls) and entry.config_cls is entry.cls.Config


def _module_of(kind: str) -> str:
    return next(m for m, k in KINDS.items() if k == kind)


# --- the whole pipeline ----------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events: list[str] = []
        self.progress: set[str] = set()
        self.logs: list[tuple[str, str]] = []

    @dnax.hookimpl
    def dnax_stage_end(self, stage, run_dir, result, skipped, seconds):
        self.events.append(f"{stage}:{'skip' if skipped else 'run'}")

    @dnax.hookimpl
    def dnax_block_trained(self, block, epoch, losses, final):
        self.events.append(f"trained{block.index}:{'final' if final else epoch}")

    @dnax.hookimpl
    def dnax_block_ranked(self, block, ranking):
        self.events.append(f"ranked{block.index}:{len(ranking.candidates)}")

    @dnax.hookimpl
    def dnax_progress(self, stage, task, completed, total, info):
        self.progress.add(stage)

    @dnax.hookimpl
    def dnax_log(self, stage, message):
        self.logs.append((stage, message))


@pytest.fixture(scope="module")
def reg():
    recorder = Recorder()
    registry = Registry.create(entry_points=False, plugins=[*EX.values(), recorder])
    registry.recorder = recorder
    return registry


@pytest.fixture(scope="module")
def run(reg, tmp_path_factory):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = dnax.run_pipeline(PIPELINE, tmp_path_factory.mktemp("examples"), registry=reg)
    assert (out.getvalue(), err.getvalue()) == ("", "")  # plugins never print
    return result


@pytest.fixture(scope="module")
def ctx(reg, run):
    return dnax.stage_context(PIPELINE, run.run_dir.root, "rank", registry=reg)


def test_the_pipeline_runs_every_example_then_resumes(reg, run):
    rec = reg.recorder
    assert rec.events == ["teacher:run", "trained0:final", "trained1:final", "train:run",
                          "ranked0:6", "ranked1:6", "rank:run", "select:run", "retrain:run"]
    assert rec.progress == {"teacher", "train", "rank", "retrain"}
    assert {stage for stage, _ in rec.logs} == {"select", "retrain"}
    rec.events.clear()
    dnax.run_pipeline(PIPELINE, run.run_dir.root, registry=reg)
    assert rec.events == [f"{s}:skip" for s in ("teacher", "train", "rank", "select", "retrain")]


def test_run_py_registers_every_example():
    reg = RUNNER.registry()
    names = {"data": "small-digits", "teacher": "tiny", "space": "kernels",
             "trainer": "one-path", "evaluator": "plain-loop", "costs": "depth",
             "selector": "pareto-merge", "retrainer": "quick"}
    for kind, name in names.items():
        assert reg.get(kind, name).origin.distribution == "<local>"
    assert "distill" in reg.names("trainer")  # beside the built-ins


# --- each interface --------------------------------------------------------------------------


def test_data_source_cuts_digits_into_three_splits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    source = EX["data_source"].SmallDigits(EX["data_source"].DigitsConfig(per_split=5))
    assert source.num_classes == 10
    raw = dnax.DataConfig((1, 8, 8), (0.0,), (1.0,))
    for k, split in enumerate(("train", "heldout", "val")):
        x, y = source.dataset(split, raw).tensors
        assert torch.equal(y, torch.tensor(digits.target[5 * k:5 * k + 5]))
        assert torch.allclose(x[:, 0], torch.tensor(digits.images[5 * k:5 * k + 5] / 16,
                                                    dtype=torch.float32))
    # 16 px, 3 channels, normalised: pixel (1, 1) of a 2x bilinear upsampling is 9/16, 3/16,
    # 3/16 and 1/16 of the four top-left source pixels; pixel (0, 0) is the corner's own
    x, _ = source.dataset("val", dnax.DataConfig((3, 16, 16), (0.5,) * 3, (0.5,) * 3)).tensors
    a = digits.images[10:15] / 16
    assert x.shape == (5, 3, 16, 16) and torch.equal(x[:, 0], x[:, 2])
    img = x[:, 1] * 0.5 + 0.5
    want = (9 * a[:, 0, 0] + 3 * a[:, 0, 1] + 3 * a[:, 1, 0] + a[:, 1, 1]) / 16
    assert np.allclose(img[:, 1, 1].numpy(), want, atol=1e-6)
    assert np.allclose(img[:, 0, 0].numpy(), a[:, 0, 0], atol=1e-6)
    too_many = EX["data_source"].SmallDigits(EX["data_source"].DigitsConfig(per_split=600))
    with pytest.raises(dnax.DataError, match=r"^\$\.data\.per_split: 600 x 3 splits > 1797"):
        too_many.dataset("train", raw)
    with pytest.raises(dnax.DataError, match=r"^small-digits: no split 'test' "):
        source.dataset("test", raw)


def test_teacher_blocks_features_and_training(ctx):
    teacher = ctx.plugins.teacher
    # stem: stride 2, 8 channels; stage 0 keeps 8 x 8 px; stages 1 and 2 halve, to 16 then 24
    assert teacher.blocks(16) == (dnax.BlockSpec(0, 1, 8, 16, 2, 8, 4),
                                  dnax.BlockSpec(1, 2, 16, 24, 2, 4, 2))
    assert [(b.in_size, b.out_size) for b in teacher.blocks(32)] == [(16, 8), (8, 4)]
    result = ctx.results["teacher"]
    assert result.blocks == teacher.blocks(16) and result.num_classes == 10
    model = teacher.load(ctx, result)
    images, labels = next(iter(ctx.loader("train", 64)))
    ours = teacher.block_features(model, images)
    with torch.no_grad():
        timm_own = model.forward_intermediates(images, indices=[1, 2, 3],
                                               intermediates_only=True, extra_blocks=True)
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, timm_own, strict=True))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.3  # it trained: chance is 0.1


def test_space_candidates_and_supernet_paths_are_the_final_network():
    mod = EX["space"]
    space = mod.KernelSpace(mod.KernelSpaceConfig())
    blocks = (dnax.BlockSpec(0, 1, 8, 16, 2, 8, 4), dnax.BlockSpec(1, 2, 16, 24, 2, 4, 2))
    b0 = blocks[0]
    cands = space.candidates(b0)
    # a cell of depth 1 then one of depth 2, two kernels: 2 + 4 candidates, by hand
    assert [(c.index, c.cell, c.ops) for c in cands] == [
        (0, 0, (0,)), (1, 0, (1,)), (2, 1, (0, 0)), (3, 1, (0, 1)), (4, 1, (1, 0)),
        (5, 1, (1, 1))]
    assert cands[3].arch == ("ir_r1_k3_s2_e2_c16", "ir_r1_k5_s1_e2_c16")
    net = space.build_supernet(b0).eval()
    check_supernet(net, space.cells(b0), "space")
    x = torch.randn(2, 8, 8, 8)
    for c in cands:  # each path, with its weights put into the network timm builds, agrees
        chosen = [c, space.candidates(blocks[1])[0]]
        final = build_network(space.arch_def(blocks, chosen), 10, space.model_kwargs()).eval()
        for j, o in enumerate(c.ops):
            final.blocks[1][j].load_state_dict(net.cells[c.cell].layers[j][o].state_dict())
        with torch.no_grad():
            assert torch.allclose(net(x, c.cell, c.ops), final.blocks[1](x), atol=1e-6)
            stem = final.blocks[0](final.bn1(final.conv_stem(torch.zeros(1, 3, 16, 16))))
        assert stem.shape[1:] == (b0.in_chs, b0.in_size, b0.in_size)
        assert final(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    assert space.fingerprint() == mod.KernelSpace(mod.KernelSpaceConfig()).fingerprint()
    assert space.fingerprint() != mod.KernelSpace(mod.KernelSpaceConfig(kernels=(3,))
                                                  ).fingerprint()


def _path_mse(net, feats, block, cands):
    """Mean over every candidate of its output's MSE to the teacher's, BatchNorm on the batch,
    each path run layer by layer through the cell's parts."""
    out = []
    with torch.no_grad():
        for c in cands:
            cell = net.cells[c.cell]
            x = cell.enter(feats[block.index])
            for layer, o in zip(cell.layers, c.ops, strict=True):
                x = layer[o](x)
            out.append(((cell.exit(x) - feats[block.index + 1]) ** 2).mean().item())
    return np.array(out)


def test_trainer_saves_supernets_that_learned(ctx):
    teacher, space = ctx.plugins.teacher, ctx.plugins.space
    model = teacher.load(ctx, ctx.results["teacher"])
    images, _ = next(iter(ctx.loader("train", 32)))
    with torch.no_grad():
        feats = model.forward_intermediates(images, indices=[1, 2, 3], intermediates_only=True,
                                            extra_blocks=True)
    for block, ckpt in zip(ctx.results["teacher"].blocks, ctx.results["train"].blocks,
                           strict=True):
        assert (ckpt.block, ckpt.path, ckpt.steps) == (
            block.index, f"supernets/block{block.index}.safetensors", 10)
        assert metadata(ctx.run_dir, ckpt.path)["steps"] == "10"
        trained = load_supernet(ctx, ckpt.path, block).train()
        torch.manual_seed(ctx.seed + block.index)  # the trainer's initial weights
        fresh = space.build_supernet(block).train()
        cands = space.candidates(block)
        assert _path_mse(trained, feats, block, cands).mean() \
            < _path_mse(fresh, feats, block, cands).mean()
    other = attrs.evolve(ctx, plugins=attrs.evolve(ctx.plugins, space=type(space)(
        type(space.config)(kernels=(3, 7)))))
    with pytest.raises(dnax.ArtifactError, match="space_hash"):
        load_supernet(other, ctx.results["train"].blocks[0].path, ctx.results["teacher"].blocks[0])


def test_evaluator_scores_each_candidate(ctx, run):
    teacher, space = ctx.plugins.teacher, ctx.plugins.space
    assert ctx.results["rank"].key == "mse"
    model = teacher.load(ctx, ctx.results["teacher"])
    heldout = ctx.plugins.data.dataset("heldout", ctx.data_config).tensors[0][:32]
    with torch.no_grad():
        feats = model.forward_intermediates(heldout, indices=[1, 2, 3], intermediates_only=True,
                                            extra_blocks=True)
    for block, ckpt in zip(ctx.results["teacher"].blocks, ctx.results["train"].blocks,
                           strict=True):
        ranking = run.ranking(block.index)
        assert list(ranking.candidates) == list(space.candidates(block))
        net = load_supernet(ctx, ckpt.path, block).train()
        want = _path_mse(net, feats, block, ranking.candidates)
        assert np.allclose(ranking.scores["mse"], want, rtol=1e-5, atol=1e-7)


def test_cost_model_counts_layers(ctx, run):
    for block in ctx.results["teacher"].blocks:
        assert list(run.ranking(block.index).costs["depth"]) == [1, 1, 2, 2, 2, 2]
    assert run.fixed_costs["depth"] == 1.0  # the fixed stage: one ds layer
    sel = run.selection
    chosen = [run.ranking(b).candidates[i] for b, i in enumerate(sel.candidates)]
    assert sel.costs["depth"] == 1 + sum(len(c.arch) for c in chosen)
    assert sel.costs["depth"] == sum(len(stage) for stage in sel.arch_def)
    # the built-in params model beside it agrees with the network the example space builds
    net = build_network(sel.arch_def, 10, sel.model_kwargs)
    assert sel.costs["params"] == sum(p.numel() for p in net.parameters())


def _brute_force(rankings, fixed, key, metric, budget):
    best = None
    for choice in itertools.product(*(range(len(r.candidates)) for r in rankings)):
        cost = fixed[metric] + sum(r.costs[metric][i] for r, i in zip(rankings, choice,
                                                                        strict=True))
        score = sum(r.scores[key][i] for r, i in zip(rankings, choice, strict=True))
        if cost <= budget and math.isfinite(score) and (best is None or score < best[0]):
            best = (score, choice)
    return best


def test_selector_in_the_pipeline_is_the_brute_force_optimum(run):
    rankings = run.rankings()
    sel = run.selection
    score, choice = _brute_force(rankings, run.fixed_costs, "mse", "depth", 4)
    assert sel.candidates == choice and math.isclose(sel.score, score, rel_tol=1e-9)
    assert sel.budgets == {"depth": 4.0} and sel.costs["depth"] <= 4


def test_selector_matches_brute_force_on_random_rankings():
    mod = EX["selector"]
    ctx = SelectorContext()
    rng = np.random.default_rng(0)
    for trial in range(40):
        rankings = []
        for b in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 6))
            scores = rng.random(n)
            if trial % 5 == 0:
                scores[rng.integers(n)] = np.nan
            costs = rng.integers(0, 10, n).astype(np.float64)
            cands = tuple(dnax.Candidate(b, i, 0, (i,), (f"op{i}",)) for i in range(n))
            rankings.append(dnax.BlockRanking(b, cands, {"s": scores}, {"c": costs}))
        fixed = {"c": float(rng.integers(0, 3))}
        budget = float(rng.integers(1, 25))
        selector = mod.ParetoMerge(mod.ParetoMergeConfig(key="s", metric="c", budget=budget))
        best = _brute_force(rankings, fixed, "s", "c", budget)
        if best is None:
            with pytest.raises(dnax.NoFeasibleNetworkError, match=r"^\$\.selector\.budget: "):
                selector.select(ctx, rankings, fixed)
            continue
        sel = selector.select(ctx, rankings, fixed)
        assert math.isclose(sel.score, best[0], rel_tol=1e-12), trial
        assert sel.costs["c"] <= budget
        assert math.isclose(sum(r.scores["s"][i] for r, i in zip(rankings, sel.candidates,
                                                                  strict=True)), sel.score)
        assert sel.arch_def == tuple(tuple(r.candidates[i].arch)
                                     for r, i in zip(rankings, sel.candidates, strict=True))


def test_selector_check_names_its_key(reg):
    raw = tomllib.loads(PIPELINE.read_text())
    raw["selector"]["metric"] = "latency"
    with pytest.raises(dnax.ConfigError) as e:
        dnax.load_pipeline(raw, reg)
    assert e.value.problems == ["$.selector: metric: no [[costs]] model measures 'latency'"]


def test_retrainer_reports_what_its_export_scores(ctx, run, reg):
    result = run.results["retrain"]
    assert (result.model, result.meta) == ("model/weights.safetensors", "model/network.json")
    state = run.run_dir.load_state("model/resume.pt")
    assert (state["epoch"], state["updates"]) == (1, 64 // 16)  # 1 epoch of 4 full batches
    model = dnax.load_model(run.run_dir.path("model"), registry=reg)  # its dnax_load_model
    assert not model.training
    x, y = ctx.plugins.data.dataset("val", ctx.data_config).tensors
    with torch.no_grad():
        logits = model(x)
    assert math.isclose(result.metrics["top1"], 100 * (logits.argmax(1) == y).float().mean(),
                        rel_tol=1e-6)
    assert math.isclose(result.metrics["val_loss"], F.cross_entropy(logits, y).item(),
                        rel_tol=1e-4)
    assert [list(s) for s in run.selection.arch_def] == \
        run.run_dir.read_json("model/network.json", kind="network")["arch_def"]


def test_the_command_example_adds_a_dnax_command(monkeypatch):
    """The dnax_register_commands block of the page (tests/example_plugin's __init__.py)."""
    import typer
    from typer.testing import CliRunner

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    monkeypatch.delitem(sys.modules, "dnax_example", raising=False)
    import dnax_example

    cli = typer.Typer()
    dnax_example.dnax_register_commands(cli=cli)
    cli.command("other")(lambda: None)  # a second command: typer then keeps the names
    res = CliRunner().invoke(cli, ["example-hello", "--name", "docs"])
    assert res.exit_code == 0, res.output
    assert res.output == "hello docs, from dnax-example (space 'convs', teacher 'tinycnn')\n"
