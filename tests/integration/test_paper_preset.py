"""The paper preset: distinct cells, the paper's counts, and the official searched networks
DNA-a..d as networks of it whose parameter counts the cost model gets exactly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

import dnax
from dnax.plugins.costs.params import Params, ParamsConfig
from dnax.plugins.spaces.mbconv import MBConvSpace, MBConvSpaceConfig
from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher

pytestmark = pytest.mark.slow  # starts processes on the paper-sized space

#: the official searched networks, as changlin31/DNA ``retraining/model.py`` defines them
#: (stem stage, six searched stages); the paper reports 4.2 M, 4.9 M, 5.3 M and 6.4 M params
OFFICIAL = {
    "DNA-a": (4.2e6, [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k5_s2_e3_c24_se0.25", "ir_r1_k3_s1_e3_c24_se0.25", "ir_r1_k3_s1_e6_c24_se0.25"],
        ["ir_r2_k3_s2_e3_c40_se0.25", "ir_r1_k5_s1_e3_c40_se0.25", "ir_r1_k3_s1_e6_c40_se0.25"],
        ["ir_r1_k7_s2_e6_c80_se0.25", "ir_r1_k3_s1_e3_c80_se0.25", "ir_r1_k5_s1_e3_c80_se0.25",
         "ir_r1_k3_s1_e6_c80_se0.25"],
        ["ir_r1_k5_s1_e6_c96_se0.25", "ir_r2_k5_s1_e3_c96_se0.25", "ir_r1_k5_s1_e6_c96_se0.25"],
        ["ir_r1_k5_s2_e6_c160_se0.25", "ir_r3_k5_s1_e3_c160_se0.25",
         "ir_r1_k5_s1_e6_c160_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"]]),
    "DNA-b": (4.9e6, [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k3_s2_e3_c24_se0.25", "ir_r1_k5_s1_e3_c24_se0.25", "ir_r1_k7_s1_e6_c24_se0.25"],
        ["ir_r1_k7_s2_e6_c40_se0.25", "ir_r1_k5_s1_e3_c40_se0.25", "ir_r1_k7_s1_e6_c40_se0.25"],
        ["ir_r1_k5_s2_e6_c80_se0.25", "ir_r2_k5_s1_e3_c80_se0.25", "ir_r1_k3_s1_e6_c80_se0.25"],
        ["ir_r1_k5_s1_e6_c96_se0.25", "ir_r2_k5_s1_e3_c96_se0.25", "ir_r1_k5_s1_e6_c96_se0.25"],
        ["ir_r1_k7_s2_e6_c192_se0.25", "ir_r3_k5_s1_e3_c192_se0.25",
         "ir_r1_k7_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"]]),
    "DNA-c": (5.3e6, [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k5_s2_e6_c24_se0.25", "ir_r1_k3_s1_e6_c24_se0.25"],
        ["ir_r2_k5_s2_e6_c40_se0.25", "ir_r1_k3_s1_e6_c40_se0.25", "ir_r1_k5_s1_e6_c40_se0.25"],
        ["ir_r1_k5_s2_e6_c80_se0.25", "ir_r1_k3_s1_e6_c80_se0.25", "ir_r2_k5_s1_e6_c80_se0.25"],
        ["ir_r1_k3_s1_e6_c112_se0.25", "ir_r2_k5_s1_e6_c112_se0.25",
         "ir_r1_k5_s1_e3_c112_se0.25"],
        ["ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e3_c192_se0.25",
         "ir_r2_k5_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"]]),
    "DNA-d": (6.4e6, [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k7_s2_e6_c24_se0.25", "ir_r1_k5_s1_e6_c24_se0.25", "ir_r1_k7_s1_e6_c24_se0.25"],
        ["ir_r4_k7_s2_e6_c40_se0.25"],
        ["ir_r1_k7_s2_e6_c80_se0.25", "ir_r2_k5_s1_e6_c80_se0.25", "ir_r1_k7_s1_e6_c80_se0.25"],
        ["ir_r1_k7_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25",
         "ir_r1_k7_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25"],
        ["ir_r1_k7_s2_e6_c192_se0.25", "ir_r3_k5_s1_e6_c192_se0.25",
         "ir_r1_k7_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"]]),
}
RES = 224


def _layers(stage: list[str]) -> tuple[str, ...]:
    """One arch string per layer, as timm expands ``_rN``: the repeats take stride 1."""
    out = []
    for s in stage:
        n = int(re.search(r"_r(\d+)", s).group(1))
        one = re.sub(r"_r\d+", "_r1", s)
        out += [one] + [re.sub(r"_s\d+", "_s1", one)] * (n - 1)
    return tuple(out)


@pytest.fixture(scope="module")
def paper():
    teacher = EfficientNetTeacher(EfficientNetConfig(model="efficientnet_b0"))
    blocks = teacher.blocks(RES)
    return MBConvSpace(MBConvSpaceConfig(preset="paper")), blocks


def test_cells_are_distinct_with_the_official_widths(paper):
    space, blocks = paper
    cells = [[(c.depth, c.out_chs) for c in space.cells(b)] for b in blocks]
    assert [sum(6 ** d for d, _ in block) for block in cells] == [288, 1548, 1548, 2808, 16848, 6]
    assert all(len(set(block)) == len(block) for block in cells)
    assert {w for d, w in cells[3] if d == 4} == {96, 112}
    assert {w for d, w in cells[4] if d == 5} == {160, 192}
    # every candidate's arch strings are distinct: no network of the space is listed twice
    for b in blocks:
        cands = space.candidates(b)
        assert len({c.arch for c in cands}) == len(cands)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_networks_are_networks_of_the_preset(paper, tmp_path, name):
    space, blocks = paper
    published, arch = OFFICIAL[name]
    chosen = []
    for spec, stage in zip(blocks, arch[1:], strict=True):
        by_arch = {c.arch: c for c in space.candidates(spec)}
        assert _layers(stage) in by_arch, f"{name} block {spec.index}: not a candidate"
        chosen.append(by_arch[_layers(stage)])
    timm_net = EfficientNet(decode_arch_def(arch), num_classes=1000, stem_size=32,
                            num_features=1280, act_layer="swish")
    truth = sum(p.numel() for p in timm_net.parameters())
    assert truth == pytest.approx(published, rel=0.03)  # the paper's rounded figure
    # dnax's network of these candidates and its cost model's count
    ours = space.arch_def(blocks, chosen)
    assert [_layers(s) for s in ours[1:]] == [_layers(s) for s in arch[1:]]
    config = dnax.PipelineConfig(dnax.PipelineSettings(resolution=RES), {})
    plugins = dnax.Plugins(data=SimpleNamespace(num_classes=1000), teacher=None, space=space)
    ctx = dnax.StageContext("select", config, plugins, dnax.RunDir(tmp_path), None,
                            results={"teacher": SimpleNamespace(blocks=blocks)})
    model = Params(ParamsConfig())
    total, width = model.fixed_cost(ctx, blocks), None
    for spec, cand in zip(blocks, chosen, strict=True):
        costs = model.candidate_costs(ctx, spec, [cand])
        if costs.ndim == 2:  # rows: the previous block's distinct widths, ascending
            rows = sorted({c.out_chs for c in space.cells(blocks[spec.index - 1])})
            costs = costs[rows.index(width)]
        total += float(costs[0])
        width = space.cells(spec)[cand.cell].out_chs
    assert total == truth


def test_validate_json_shows_every_cell_width(tmp_path):
    toml = tmp_path / "paper.toml"
    toml.write_text('[pipeline]\nresolution = 224\n[data]\nplugin = "digits"\n[teacher]\n'
                    'plugin = "efficientnet"\nmodel = "efficientnet_b0"\n[space]\n'
                    'plugin = "mbconv"\npreset = "paper"\n')
    res = subprocess.run([sys.executable, "-m", "dnax", "validate", str(toml), "--json"],
                         capture_output=True, text=True,
                         env={"DNAX_DISABLE_PLUGIN_AUTOLOAD": "1", "NO_COLOR": "1",
                              "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    blocks = json.loads(res.stdout)["plan"]["blocks"]
    widths = [[(c["depth"], c["out_chs"]) for c in b["cells"]] for b in blocks]
    assert widths[3] == [(3, 112), (4, 96), (4, 112)] and widths[4] == [(4, 192), (5, 160),
                                                                        (5, 192)]
    assert [b["num_candidates"] for b in blocks] == [288, 1548, 1548, 2808, 16848, 6]
    assert all(len(set(w)) == len(w) for w in widths)
