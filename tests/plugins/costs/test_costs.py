"""Cost models: predicted params / FLOPs of random networks against the built timm network."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from attrs import frozen
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch.utils.flop_counter import FlopCounterMode

import dnax
from dnax.plugins.costs.flops import Flops, FlopsConfig
from dnax.plugins.costs.params import Params, ParamsConfig

RES = 32
OPS = tuple(itertools.product((3, 5), (3, 6)))  # (kernel, expansion)
#: per block: stride, output width, input size at RES (stem /2, then the fixed stage keeps 16 px)
SHAPES = ((2, 24, 16), (2, 40, 8), (1, 48, 4), (2, 64, 4))
KWARGS = {"stem_size": 32, "num_features": 128, "act_layer": "swish"}


@frozen
class SpaceConfig:
    depths: tuple[int, ...] = (1, 2)
    #: per block, an optional width per cell (default: the block's width for every cell)
    widths: tuple[tuple[int, ...], ...] = ()


class PaperLikeSpace(dnax.SearchSpace):
    """MBConv cells of several depths, one op per layer, the paper's candidate ordering."""

    Config = SpaceConfig

    def _width(self, block: dnax.BlockSpec, cell: int) -> int:
        w = self.config.widths
        return w[block.index][cell] if w else block.out_chs

    def cells(self, block):
        return tuple(dnax.CellSpec(i, d, self._width(block, i), tuple(map(str, OPS)))
                     for i, d in enumerate(self.config.depths))

    def candidates(self, block):
        out = []
        for cell in self.cells(block):
            for ops in itertools.product(range(len(OPS)), repeat=cell.depth):
                arch = tuple(f"ir_r1_k{OPS[o][0]}_s{block.stride if j == 0 else 1}_"
                             f"e{OPS[o][1]}_c{cell.out_chs}_se0.25" for j, o in enumerate(ops))
                out.append(dnax.Candidate(block.index, len(out), cell.index, ops, arch))
        return out

    def build_supernet(self, block):
        raise NotImplementedError

    def arch_def(self, blocks, chosen):
        return [["ds_r1_k3_s1_c16_se0.25"], *[list(c.arch) for c in chosen]]

    def model_kwargs(self):
        return dict(KWARGS)

    def fingerprint(self):
        return f"paper-like-{self.config}"


def _blocks(shapes=SHAPES):
    return tuple(dnax.BlockSpec(i, i + 1, 8 * (i + 1), w, s, size, -(-size // s))
                 for i, (s, w, size) in enumerate(shapes))


def _ctx(tmp_path, space, blocks, num_classes=10):
    config = dnax.PipelineConfig(dnax.PipelineSettings(resolution=RES), {})
    plugins = dnax.Plugins(data=SimpleNamespace(num_classes=num_classes), teacher=None,
                           space=space)
    return dnax.StageContext("select", config, plugins, dnax.RunDir(tmp_path), None,
                             results={"teacher": SimpleNamespace(blocks=blocks)})


def _network(space, blocks, choice, num_classes=10) -> EfficientNet:
    chosen = [space.candidates(b)[i] for b, i in zip(blocks, choice, strict=True)]
    return EfficientNet(decode_arch_def(space.arch_def(blocks, chosen)),
                        num_classes=num_classes, **space.model_kwargs()).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    space = PaperLikeSpace(SpaceConfig())
    blocks = _blocks()
    ctx = _ctx(tmp_path_factory.mktemp("run"), space, blocks)
    tables = {}
    for model in (Params(ParamsConfig()), Flops(FlopsConfig())):
        per_block = [model.candidate_costs(ctx, b, space.candidates(b)) for b in blocks]
        tables[model.metric] = (per_block, model.fixed_cost(ctx, blocks))
    return space, blocks, tables


def _random_choices(space, blocks, n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [len(space.candidates(b)) for b in blocks]
    return [tuple(int(rng.integers(s)) for s in sizes) for _ in range(n)]


def test_params_exact_for_random_networks(setup):
    space, blocks, tables = setup
    per_block, fixed = tables["params"]
    assert [len(c) for c in per_block] == [4 + 16] * 4
    for choice in _random_choices(space, blocks, 12):
        model = _network(space, blocks, choice)
        predicted = fixed + sum(c[i] for c, i in zip(per_block, choice, strict=True))
        assert predicted == sum(p.numel() for p in model.parameters())


def test_flops_match_the_flop_counter(setup):
    space, blocks, tables = setup
    per_block, fixed = tables["flops"]
    for choice in _random_choices(space, blocks, 4, seed=1):
        model = _network(space, blocks, choice)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, RES, RES))
        predicted = fixed + sum(c[i] for c, i in zip(per_block, choice, strict=True))
        assert predicted == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_costs_grow_with_kernel_and_expansion(setup):
    _, _, tables = setup
    params = tables["params"][0][0]
    # one-layer candidates of block 0, in OPS order: (3,3) (3,6) (5,3) (5,6)
    assert params[0] < params[1] and params[0] < params[2] < params[3]


def test_fixed_params_include_the_classifier(tmp_path):
    space, blocks = PaperLikeSpace(SpaceConfig()), _blocks()
    model = Params(ParamsConfig())
    ten = model.fixed_cost(_ctx(tmp_path, space, blocks, 10), blocks)
    hundred = Params(ParamsConfig()).fixed_cost(_ctx(tmp_path, space, blocks, 100), blocks)
    assert hundred - ten == 90 * (KWARGS["num_features"] + 1)


def _chain_cost(per_block, fixed, space, blocks, choice):
    """A network's cost from per-block tables, worked out here: a 2-D table's row is the
    entering width's place among the previous block's distinct cell widths, ascending."""
    total, width = fixed, None
    for b, (costs, i) in enumerate(zip(per_block, choice, strict=True)):
        if costs.ndim == 1:
            total += costs[i]
        else:
            rows = sorted({c.out_chs for c in space.cells(blocks[b - 1])})
            assert costs.shape == (len(rows), len(space.candidates(blocks[b])))
            total += costs[rows.index(width), i]
        width = space.cells(blocks[b])[space.candidates(blocks[b])[i].cell].out_chs
    return total


def test_cells_of_different_widths_cost_what_the_built_network_counts(tmp_path):
    """Cells of one block with their own widths (block 0: 24 or 32, block 1: 40 or 48, the
    last: 64 or 72): the next block's first layer and the head cost what the width they
    receive makes them cost; params equal timm's count and FLOPs the flop counter's, for random
    networks across every width combination."""
    widths = ((24, 32), (40, 48), (48, 48), (64, 72))
    space, blocks = PaperLikeSpace(SpaceConfig(widths=widths)), _blocks()
    ctx = _ctx(tmp_path, space, blocks)
    tables = {}
    for model in (Params(ParamsConfig()), Flops(FlopsConfig())):
        per_block = [model.candidate_costs(ctx, b, space.candidates(b)) for b in blocks]
        tables[model.metric] = (per_block, model.fixed_cost(ctx, blocks))
    per_block, _ = tables["params"]
    assert [c.ndim for c in per_block] == [1, 2, 2, 1]  # block 3 follows one width (48)
    seen = set()
    for choice in _random_choices(space, blocks, 16, seed=3):
        model = _network(space, blocks, choice)
        seen.add(tuple(space.candidates(b)[i].cell for b, i in zip(blocks, choice, strict=True)))
        assert _chain_cost(*tables["params"], space, blocks, choice) == sum(
            p.numel() for p in model.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, RES, RES))
        assert _chain_cost(*tables["flops"], space, blocks, choice) == pytest.approx(
            counter.get_total_flops(), rel=0.01)
    assert len({c[0] for c in seen}) == 2 and len({c[3] for c in seen}) == 2


def test_flops_refuse_sizes_the_network_does_not_see(tmp_path):
    space = PaperLikeSpace(SpaceConfig())
    wrong = _blocks(((2, 24, 16), (2, 40, 8), (1, 48, 2), (2, 64, 2)))
    with pytest.raises(dnax.ConfigError, match="block 2 sees 4 px"):
        Flops(FlopsConfig()).fixed_cost(_ctx(tmp_path, space, wrong), wrong)


def test_registered_under_their_metric_names():
    from dnax.plugins.costs import flops, params
    from dnax.registry import Registry

    reg = Registry.create(entry_points=False, builtins=False,
                            plugins=[params, flops])
    assert reg.get("costs", "params").cls.metric == "params"
    assert reg.get("costs", "flops").cls.metric == "flops"


@pytest.mark.slow
def test_paper_space_of_the_mbconv_plugin(tmp_path):
    """The shipped paper space under a B0 teacher: exact params and FLOPs of random networks."""
    from dnax.plugins.spaces import mbconv
    from dnax.plugins.teachers import efficientnet as teachers

    teacher = teachers.EfficientNetTeacher(teachers.EfficientNetConfig(model="efficientnet_b0"))
    blocks = teacher.blocks(RES)
    space = mbconv.MBConvSpace(mbconv.MBConvSpaceConfig())
    ctx = _ctx(tmp_path, space, blocks, num_classes=10)
    tables = {}
    for model in (Params(ParamsConfig()), Flops(FlopsConfig())):
        tables[model.metric] = ([model.candidate_costs(ctx, b, space.candidates(b))
                                 for b in blocks], model.fixed_cost(ctx, blocks))
    assert [c.shape[-1] for c in tables["params"][0]] == [288, 1548, 1548, 2808, 16848, 6]
    # cells of different widths in blocks 0, 3 and 4: blocks 1, 4 and 5 depend on them
    assert [c.ndim for c in tables["params"][0]] == [1, 2, 1, 1, 2, 2]
    for choice in _random_choices(space, blocks, 2, seed=2):
        model = _network(space, blocks, choice)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, RES, RES))
        for metric, truth in (("params", sum(p.numel() for p in model.parameters())),
                              ("flops", counter.get_total_flops())):
            assert _chain_cost(*tables[metric], space, blocks, choice) == truth
