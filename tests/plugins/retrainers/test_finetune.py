"""The ``finetune`` retrainer: the stitched network against the block supernets chained with
their adapters as separate layers (computed here, not with the stitcher's helpers), and a whole
pipeline that fine-tunes it."""

from __future__ import annotations

import json

import faultkit
import pytest
import torch
from torch import nn

import dnax
from dnax.plugins.retrainers.stitch import stitch
from dnax.plugins.spaces.mbconv import MBConvSpace, MBConvSpaceConfig
from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher
from dnax.plugins.toolkit.builder import build_network

#: the tiny teacher: stem 8, stage 0 ds c8, stage 1 ir s2 c16, stage 2 ir s2 c24, head 64
TEACHER = EfficientNetConfig(stem_size=8, num_features=64, arch_def=(
    ("ds_r1_k3_s1_e1_c8",), ("ir_r1_k3_s2_e3_c16",), ("ir_r1_k3_s2_e3_c24",)))


def _space() -> MBConvSpace:
    """Cells of other widths than the teacher's: block 1 takes 24 channels (block 0's first
    cell), the teacher gives 16, so every adapter is a real 1x1 conv + BN."""
    from dnax.plugins.spaces.mbconv import BlockConfig, CellConfig

    return MBConvSpace(MBConvSpaceConfig(
        preset="custom", kernels=(3, 5), expansions=(3.0, 6.0), stem_size=8,
        stem_stage=("ds_r1_k3_s1_e1_c8",), num_features=64,
        blocks=(BlockConfig((CellConfig(1, 24), CellConfig(2, 32))),
                BlockConfig((CellConfig(1, 16), CellConfig(2, 40))))))


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights and BatchNorm statistics everywhere (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return net.eval()


def _setup(cells=(0, 1), ops=None):
    teacher_plugin = EfficientNetTeacher(TEACHER)
    specs = teacher_plugin.blocks(32)
    teacher = _randomise(teacher_plugin.build_model(10), 1)
    space = _space()
    supernets = []
    for spec in specs:
        torch.manual_seed(spec.index)
        supernets.append(_randomise(space.build_supernet(spec), 2 + spec.index))
    chosen = []
    for spec, c in zip(specs, cells, strict=True):
        cands = [x for x in space.candidates(spec) if x.cell == c]
        chosen.append(cands[-1] if ops is None else cands[ops])
    arch_def = space.arch_def(specs, chosen)
    model = _randomise(build_network(arch_def, 10, space.model_kwargs()), 9)
    return teacher, specs, supernets, chosen, model


def _chain(model, teacher, supernets, chosen, x):
    """By hand: the network's stem, each chosen cell with its enter and exit adapters as
    layers, then the teacher's head; each cell's output before its exit, and the logits."""
    with torch.no_grad():
        x = model.blocks[0](model.bn1(model.conv_stem(x)))
        cells = []
        for net, cand in zip(supernets, chosen, strict=True):
            cell = net.cells[cand.cell]
            x = cell.enter(x)
            for j, o in enumerate(cand.ops):
                x = cell.layers[j][o](x)
            cells.append(x)
            x = cell.exit(x)
        logits = teacher.classifier(teacher.global_pool(teacher.bn2(teacher.conv_head(x))))
    return cells, logits


def _stages(model, x):
    with torch.no_grad():
        x = model.blocks[0](model.bn1(model.conv_stem(x)))
        out = []
        for stage in model.blocks[1:]:
            x = stage(x)
            out.append(x)
    return out


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_stitched_blocks_equal_the_chained_supernets_with_adapters():
    teacher, specs, supernets, chosen, model = _setup()
    assert not isinstance(supernets[0].cells[0].exit, nn.Identity)  # 24 -> 16
    assert not isinstance(supernets[1].cells[1].enter, nn.Identity)  # 16 -> 24
    assert not isinstance(supernets[1].cells[1].exit, nn.Identity)  # 40 -> 24
    report = stitch(model, teacher, supernets, chosen, specs)
    assert report.stem_from_teacher and not report.inexact and len(report.folded) == 2
    assert "head (conv_head, bn2, classifier)" in report.teacher
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cells, logits = _chain(model, teacher, supernets, chosen, x)
    got = _stages(model, x)
    for b, (g, w) in enumerate(zip(got, cells, strict=True)):
        assert _rel(g, w) < 1e-4, b
    with torch.no_grad():
        assert _rel(model(x), logits) < 1e-4
    torch.testing.assert_close(model.conv_stem.weight, teacher.conv_stem.weight)


def test_without_folding_the_check_fails():
    teacher, specs, supernets, chosen, model = _setup()
    stitch(model, teacher, supernets, chosen, specs, fold=False)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cells, _ = _chain(model, teacher, supernets, chosen, x)
    got = _stages(model, x)
    assert _rel(got[1], cells[1]) > 1e-2  # block 1's input skipped the adapters


def test_a_first_layer_of_another_expansion_width_stays_fresh():
    teacher, specs, supernets, chosen, model = _setup(cells=(1, 0))  # 32 channels into 24's op
    fresh = model.blocks[2][0].conv_pw.weight.clone()
    report = stitch(model, teacher, supernets, chosen, specs)
    assert report.inexact == {1} and any(line.startswith("blocks.2.0 ") for line in report.fresh)
    torch.testing.assert_close(model.blocks[2][0].conv_pw.weight, fresh)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cells, _ = _chain(model, teacher, supernets, chosen, x)
    assert _rel(_stages(model, x)[0], cells[0]) < 1e-4  # block 0 is still exact


def test_params_are_the_retrained_architectures():
    teacher, specs, supernets, chosen, model = _setup(cells=(1, 0))
    fresh = build_network(_space().arch_def(specs, chosen), 10, _space().model_kwargs())
    before = {k: v.shape for k, v in model.state_dict().items()}
    stitch(model, teacher, supernets, chosen, specs)
    assert {k: v.shape for k, v in model.state_dict().items()} == before
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in fresh.parameters())


@pytest.mark.slow
def test_finetune_pipeline_end_to_end(tmp_path):
    config = faultkit.pipeline(retrainer={"plugin": "finetune", "epochs": 1, "batch_size": 64,
                                          "eval_batch_size": 128})
    toml = faultkit.write_pipeline(tmp_path / "ft.toml", config)
    run = dnax.run_pipeline(toml, tmp_path / "run")
    metrics = run.results["retrain"].metrics
    assert metrics["stitch_max_deviation"] < 1e-4
    assert 0 <= metrics["stitched_top1"] <= 100
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert "stem (conv_stem, bn1, stages 0-0)" in meta["stitch"]["teacher"]
    model = dnax.load_model(tmp_path / "run" / "model")
    assert sum(p.numel() for p in model.parameters()) == run.selection.costs["params"]


def test_recalibrate_gives_the_batch_statistics_by_hand():
    from dnax.plugins.retrainers.finetune import recalibrate

    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.9))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 2, 4, 4, generator=g) * 3 + 1, torch.zeros(5)) for _ in range(3)]
    recalibrate(net, batches, 2, "cpu")
    with torch.no_grad():
        y = torch.cat([net[0](x) for x, _ in batches[:2]])  # two equal-size batches
    mean = y.mean((0, 2, 3))
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in
                       (net[0](batches[0][0]).detach(), net[0](batches[1][0]).detach())]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert not net.training and net[1].momentum == 0.1
