"""The ``mbconv`` search space: the paper's counts, candidate order, timm-identical layers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from tiny import TinyTeacher, TinyTeacherConfig, make_registry

import dnax
from dnax.plugins.spaces import mbconv
from dnax.plugins.spaces.mbconv import BlockConfig, CellConfig, MBConvSpace, MBConvSpaceConfig

PAPER_COUNTS = [288, 1548, 1548, 2808, 16848, 6]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def b7_blocks() -> tuple[dnax.BlockSpec, ...]:
    """tf_efficientnet_b7's searched blocks at 224 px: from the ``efficientnet`` teacher when
    it is installed, else from DNA-NOTES' figures."""
    outs, strides, sizes = [48, 80, 160, 224, 384, 640], [2, 2, 2, 1, 2, 1], [112, 56, 28, 14,
                                                                             14, 7, 7]
    notes = tuple(dnax.BlockSpec(i, i + 1, ([32, *outs])[i], outs[i], strides[i], sizes[i],
                                 sizes[i + 1]) for i in range(6))
    try:
        from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher
    except ImportError:
        return notes
    blocks = EfficientNetTeacher(EfficientNetConfig(model="tf_efficientnet_b7")).blocks(224)
    assert blocks == notes
    return blocks


def tiny_space(**kw) -> MBConvSpace:
    cfg = dict(preset="custom", kernels=(3, 5), expansions=(3.0, 6.0), stem_size=8,
               stem_stage=("ds_r1_k3_s1_e1_c8",), num_features=64,
               blocks=(BlockConfig((CellConfig(1), CellConfig(2))),
                       BlockConfig((CellConfig(2, 32),)),
                       BlockConfig((CellConfig(1, 16), CellConfig(2, 16)))))
    return MBConvSpace(MBConvSpaceConfig(**{**cfg, **kw}))


def test_paper_preset_counts():
    space = MBConvSpace(MBConvSpaceConfig())
    blocks = b7_blocks()
    space.check_blocks(blocks)
    counts = [sum(c.num_candidates for c in space.cells(b)) for b in blocks]
    assert counts == PAPER_COUNTS
    assert [len(space.candidates(b)) for b in blocks] == PAPER_COUNTS
    plan = dnax.Plan("efficientnet", "mbconv", 224,
                     tuple(dnax.BlockPlan(b, space.cells(b)) for b in blocks))
    assert 1.9e17 < plan.num_networks < 2.2e17  # "about 2 x 10^17"
    assert [space.cells(b)[0].out_chs for b in blocks] == [24, 40, 80, 112, 192, 320]
    assert space.cells(blocks[0])[0].ops == ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3",
                                             "k7_e6")
    assert space.candidates(blocks[4])[-1].arch[0] == "ir_r1_k7_s2_e6_c192_se0.25"


def test_candidates_are_ordered_cell_by_cell_in_product_order():
    space = tiny_space()
    spec = TinyTeacher(TinyTeacherConfig()).blocks(32)[2]
    cands = space.candidates(spec)
    listed = list(cands)
    expected = [(c, ops) for c, cell in enumerate(space.cells(spec))
                for ops in itertools.product(range(4), repeat=cell.depth)]
    assert [(c.cell, c.ops) for c in listed] == expected
    assert [c.index for c in listed] == list(range(len(cands))) and len(cands) == 4 + 16
    assert [cands[i] for i in range(len(cands))] == listed == cands[:]
    assert cands[-1] == listed[-1] and cands[5].arch == ("ir_r1_k3_s1_e3_c16_se0.25",
                                                                   "ir_r1_k3_s1_e6_c16_se0.25")
    with pytest.raises(IndexError):
        cands[len(cands)]
    for c in listed:  # every layer string is what timm decodes it to
        (args,) = decode_arch_def([list(c.arch)])[0:1]
        assert [a["dw_kernel_size"] for a in args] == [(3, 5)[o // 2] for o in c.ops]
        assert [a["exp_ratio"] for a in args] == [(3.0, 6.0)[o % 2] for o in c.ops]


def test_supernet_ops_are_the_retrained_networks_layers():
    """Build the network a selection gives and check every chosen layer against the supernet's
    op: the same modules, the same parameter shapes, the same output for the same weights."""
    space = tiny_space()
    blocks = TinyTeacher(TinyTeacherConfig()).blocks(32)
    chosen = [space.candidates(b)[i] for b, i in zip(blocks, (5, 7, 13), strict=True)]
    net = EfficientNet(decode_arch_def(space.arch_def(blocks, chosen)), num_classes=10,
                       **space.model_kwargs()).eval()
    assert len(net.blocks) == 1 + len(blocks)
    for spec, cand, stage in zip(blocks, chosen, net.blocks[1:], strict=True):
        supernet = space.build_supernet(spec).eval()
        cell = supernet.cells[cand.cell]
        assert len(stage) == len(cand.ops) == len(cell.layers)
        for layer, o, retrained in zip(cell.layers, cand.ops, stage, strict=True):
            op = layer[o]
            assert repr(op) == repr(retrained)
            sd = retrained.state_dict()
            assert {k: v.shape for k, v in op.state_dict().items()} == {k: v.shape
                                                                        for k, v in sd.items()}
            op.load_state_dict(sd)
        x = torch.randn(2, spec.in_chs, spec.in_size, spec.in_size)
        out = supernet(x, cand.cell, cand.ops)
        assert out.shape == (2, spec.out_chs, spec.out_size, spec.out_size)
        # the path through the supernet is exactly the retrained stage between the adapters
        torch.testing.assert_close(out, cell.exit(stage(cell.enter(x))))


def test_adapters_only_where_widths_differ():
    space = tiny_space()
    b0, b1, b2 = TinyTeacher(TinyTeacherConfig()).blocks(32)  # 8->16, 16->24, 24->24
    assert space.widths(b0) == (8, 16) and space.widths(b1) == (16, 32)
    assert space.widths(b2) == (32, 16)
    s0, s1, s2 = (space.build_supernet(b) for b in (b0, b1, b2))
    assert isinstance(s0.cells[0].enter, torch.nn.Identity)
    assert isinstance(s0.cells[0].exit, torch.nn.Identity)
    assert isinstance(s1.cells[0].exit[0], torch.nn.Conv2d)  # 32 -> teacher's 24
    assert s2.cells[1].enter[0].in_channels == 24 and s2.cells[1].enter[0].out_channels == 32
    assert s2.cells[1].layers[0][0].conv_pw.in_channels == 32  # the retrained block's input


def test_cells_of_one_block_with_their_own_widths():
    """Block 1 offers a 1-layer cell of 32 channels and a 2-layer cell of 40: each cell's layers
    and exit adapter have its width, and every cell of block 2 takes the width of block 1's
    first cell (32), mapped from the teacher's 24 channels."""
    space = tiny_space(blocks=(BlockConfig((CellConfig(1),)),
                               BlockConfig((CellConfig(1, 32), CellConfig(2, 40))),
                               BlockConfig((CellConfig(1, 16), CellConfig(2, 16)))))
    _, b1, b2 = TinyTeacher(TinyTeacherConfig()).blocks(32)
    assert [(c.depth, c.out_chs) for c in space.cells(b1)] == [(1, 32), (2, 40)]
    s1, s2 = space.build_supernet(b1), space.build_supernet(b2)
    for cell, width in zip(s1.cells, (32, 40), strict=True):
        assert all(op.conv_pwl.out_channels == width for layer in cell.layers for op in layer)
        assert cell.exit[0].in_channels == width and cell.exit[0].out_channels == b1.out_chs
    for cell in s2.cells:
        assert cell.enter[0].in_channels == b2.in_chs and cell.enter[0].out_channels == 32
        assert all(op.conv_pw.in_channels == 32 for op in cell.layers[0])
    arch = {c.arch for c in space.candidates(b1)}
    assert {a[0] for a in arch} == {f"ir_r1_k{k}_s2_e{e}_c{w}_se0.25" for k in (3, 5)
                                    for e in (3, 6) for w in (32, 40)}
    assert len(arch) == 4 + 16


def test_block_count_mismatch_names_both_counts():
    space = MBConvSpace(MBConvSpaceConfig())  # 6 blocks
    blocks = TinyTeacher(TinyTeacherConfig()).blocks(32)  # 3 blocks
    with pytest.raises(dnax.ConfigError, match=r"\$\.space\.blocks: the space has 6 blocks, "
                                               r"the teacher has 3"):
        space.check_blocks(blocks)
    small = tiny_space(blocks=(BlockConfig((CellConfig(1),)),))
    with pytest.raises(dnax.ConfigError, match=r"\$\.space\.blocks: the space has 1 blocks, "
                                               r"the teacher has at least 2"):
        small.cells(blocks[1])


def test_activation_suffix_and_network_act():
    space = tiny_space(act="relu", se_ratio=0.0, expansions=(4.5,))
    spec = TinyTeacher(TinyTeacherConfig()).blocks(32)[0]
    cand = space.candidates(spec)[0]
    assert cand.arch == ("ir_r1_k3_s2_e4.5_c16_nre",)
    op = space.build_supernet(spec).cells[0].layers[0][0]
    assert isinstance(op.bn1.act, torch.nn.ReLU) and isinstance(op.se, torch.nn.Identity)
    net = EfficientNet(decode_arch_def(space.arch_def([spec], [cand])), **space.model_kwargs())
    assert isinstance(net.bn1.act, torch.nn.ReLU)
    assert repr(net.blocks[1][0]) == repr(op)


def test_fingerprint_follows_the_space():
    assert tiny_space().fingerprint() == tiny_space().fingerprint()
    assert tiny_space().fingerprint() != tiny_space(kernels=(3, 7)).fingerprint()
    paper = MBConvSpace(MBConvSpaceConfig())
    same = MBConvSpace(MBConvSpaceConfig(blocks=tuple(
        BlockConfig(tuple(CellConfig(d, w) for d, w in b)) for b in mbconv.PRESETS["paper"])))
    assert paper.fingerprint() == same.fingerprint()
    assert len(paper.fingerprint()) == 64


def _load(space: dict):
    reg = make_registry()
    return dnax.load_pipeline({"data": {"plugin": "tiny-digits"}, "teacher": {"plugin": "tiny"},
                               "space": {"plugin": "mbconv", **space}}, reg)


def test_toml_config_is_strict():
    cfg = _load({"preset": "custom", "blocks": [{"cells": [{"depth": 2, "width": 24},
                                                           {"depth": 3, "width": 24}]}]})
    space = cfg.sections["space"].config
    assert space.blocks[0].cells[1] == CellConfig(3, 24)
    problems = [
        ({"preset": "custom"}, r"\$\.space: blocks: required when preset = 'custom'"),
        ({"blocks": [{"cells": [{"depth": 2, "width": 24}, {"depth": 2, "width": 24}]}]},
         r"\$\.space\.blocks\[0\]\.cells: cells 0 and 1 are identical \(depth 2, width 24\)"),
        ({"blocks": [{"cells": [{"depht": 2}]}]}, r"depht: unknown key"),
        ({"kernels": [3, 4]}, r"\$\.space\.kernels: kernel sizes must be odd"),
        ({"stem_stage": ["xx_r1"]}, r"\$\.space\.stem_stage: not a timm arch string"),
        ({"act": "gelu"}, r"\$\.space\.act: expected one of"),
    ]
    for table, pattern in problems:
        with pytest.raises(dnax.ConfigError, match=pattern):
            _load(table)


def test_plan_through_the_kernel():
    reg = make_registry()
    plan = dnax.plan({"data": {"plugin": "tiny-digits"}, "teacher": {"plugin": "tiny"},
                      "pipeline": {"resolution": 32},
                      "space": {"plugin": "mbconv", "preset": "custom", "kernels": [3, 5],
                                "expansions": [3, 6],
                                "blocks": [{"cells": [{"depth": 1}, {"depth": 2}]},
                                           {"cells": [{"depth": 2}]},
                                           {"cells": [{"depth": 3}]}]}}, reg)
    assert [b.num_candidates for b in plan.blocks] == [4 + 16, 16, 64]
    assert plan.num_networks == math.prod([20, 16, 64])
