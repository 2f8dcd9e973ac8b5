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
    for spec, cand in zip(blocks, chosen, strict=True):
        supernet = space.build_supernet(spec).eval()
        stage = timm_net.blocks[n_fixed + spec.index]
        in_chs = stage[0].conv_pw.in_channels if hasattr(stage[0], "conv_pw") else None
        for j, o in enumerate(cand.ops):
            op = supernet.cells[cand.cell].layers[j][o]
            want = stage[j]
            layer, _ = build_layer(cand.arch[j], in_chs, kwargs, first=j == 0)
            layer.eval()
            assert _signature(op) == _signature(want) == _signature(layer)
            # the same weights give the same output in all three
            op.load_state_dict(want.state_dict())
            layer.load_state_dict(want.state_dict())
            size = spec.in_size if j == 0 else spec.out_size
            x = torch.randn(2, in_chs, size, size, generator=torch.Generator().manual_seed(j))
            with torch.no_grad():
                y = want(x)
                torch.testing.assert_close(op(x), y, rtol=0, atol=0)
                torch.testing.assert_close(layer(x), y, rtol=0, atol=0)
            in_chs = y.shape[1]
        # the cost model counts exactly the parameters of the network's stage
        counted = cost.candidate_costs(ctx, spec, [cand])[0]
        assert counted == sum(p.numel() for p in stage.parameters())
    fixed = cost.fixed_cost(ctx, blocks)
    total = fixed + sum(cost.candidate_costs(ctx, b, [c])[0]
                        for b, c in zip(blocks, chosen, strict=True))
    assert total == sum(p.numel() for p in timm_net.parameters())
