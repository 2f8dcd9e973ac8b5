"""One builder: the op a supernet trains, the layer a cost model counts and the layer of the
retrained network are the same timm module (names, shapes, counts, outputs), on random networks
of the paper space. The oracle is timm's own ``EfficientNet(decode_arch_def(...))``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

import dnax
from dnax.plugins.costs.params import Params, ParamsConfig
from dnax.plugins.retrainers.export import build_model
from dnax.plugins.spaces.mbconv import MBConvSpace, MBConvSpaceConfig
from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher
from dnax.plugins.toolkit.builder import build_layer

RES = 64
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def paper():
    teacher = EfficientNetTeacher(EfficientNetConfig(model="efficientnet_b0"))
    blocks = teacher.blocks(RES)
    space = MBConvSpace(MBConvSpaceConfig(preset="paper"))
    space.check_blocks(blocks)
    return space, blocks


def _ctx(tmp_path, space, blocks):
    config = dnax.PipelineConfig(dnax.PipelineSettings(resolution=RES), {})
    plugins = dnax.Plugins(data=SimpleNamespace(num_classes=NUM_CLASSES), teacher=None,
                           space=space)
    return dnax.StageContext("select", config, plugins, dnax.RunDir(tmp_path), None,
                             results={"teacher": SimpleNamespace(blocks=blocks)})


def _signature(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _random_network(space, blocks, rng):
    chosen = [space.candidates(b)[int(rng.integers(len(space.candidates(b))))] for b in blocks]
    arch = space.arch_def(blocks, chosen)
    timm_net = EfficientNet(decode_arch_def(arch), num_classes=NUM_CLASSES,
                            **space.model_kwargs()).eval()
    return chosen, arch, timm_net


@pytest.mark.parametrize("seed", range(3))
def test_supernet_op_cost_layer_and_retrained_layer_agree(paper, tmp_path, seed):
    space, blocks = paper
    rng = np.random.default_rng(seed)
    chosen, arch, timm_net = _random_network(space, blocks, rng)
    n_fixed = len(arch) - len(blocks)
    kwargs = space.model_kwargs()
    retrained = build_model(arch, NUM_CLASSES, kwargs, drop_path_rate=0.2).eval()
    assert _signature(retrained) == _signature(timm_net)
    cost = Params(ParamsConfig())
    ctx = _ctx(tmp_path, space, blocks)
    other_width: set[int] = set()
    rows: list[int] = []
    width = None
    for spec, cand in zip(blocks, chosen, strict=True):
        supernet = space.build_supernet(spec).eval()
        stage = timm_net.blocks[n_fixed + spec.index]
        in_chs = stage[0].conv_pw.in_channels if hasattr(stage[0], "conv_pw") else None
        for j, o in enumerate(cand.ops):
            op = supernet.cells[cand.cell].layers[j][o]
            want = stage[j]
            layer, _ = build_layer(cand.arch[j], in_chs, kwargs, first=j == 0)
            layer.eval()
            assert _signature(layer) == _signature(want)
            # the supernet's first layer takes the width of the previous block's first cell;
            # after a cell of another width the retrained layer differs in its input width only
            same_input = j > 0 or in_chs == space.input_width(spec)
            if same_input:
                assert _signature(op) == _signature(want)
            else:
                assert [k for k, _ in _signature(op)] == [k for k, _ in _signature(want)]
                other_width.add(spec.index)
            # the same weights give the same output
            layer.load_state_dict(want.state_dict())
            if same_input:
                op.load_state_dict(want.state_dict())
            size = spec.in_size if j == 0 else spec.out_size
            x = torch.randn(2, in_chs, size, size, generator=torch.Generator().manual_seed(j))
            with torch.no_grad():
                y = want(x)
                torch.testing.assert_close(layer(x), y, rtol=0, atol=0)
                if same_input:
                    torch.testing.assert_close(op(x), y, rtol=0, atol=0)
            in_chs = y.shape[1]
        # the cost model counts exactly the parameters of the network's stage (the row of the
        # width it receives; in the last block the head's share of its width comes on top)
        counted = cost.candidate_costs(ctx, spec, [cand])
        if counted.ndim == 2:
            prev = blocks[spec.index - 1]
            counted = counted[:, 0][sorted({c.out_chs for c in space.cells(prev)}).index(width)]
        else:
            counted = counted[0]
        rows.append(counted)
        if spec.index < len(blocks) - 1:
            assert counted == sum(p.numel() for p in stage.parameters())
        width = space.cells(spec)[cand.cell].out_chs
    assert other_width <= {1, 4, 5}  # only after the blocks whose cells differ in width
    fixed = cost.fixed_cost(ctx, blocks)
    assert fixed + sum(rows) == sum(p.numel() for p in timm_net.parameters())
