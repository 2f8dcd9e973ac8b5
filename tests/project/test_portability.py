"""What differs between the Pythons and torch versions dnax supports, checked on each one CI runs.

- The supernet contract check: since Python 3.12, ``isinstance`` against a protocol with
  attribute members looks attributes up statically and misses an ``nn.Module``'s submodules, so
  such a check refused every supernet there. The check must accept the toolkit's supernet and a
  third-party ``nn.Module`` one on every Python.
- The ONNX export: since torch 2.9, ``torch.onnx.export`` defaults to the dynamo exporter. The
  export must work with the installed torch and agree with onnxruntime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from paths import ROOT
from torch import nn

import dnax
from dnax.plugins.spaces.mbconv import BlockConfig, CellConfig, MBConvSpace, MBConvSpaceConfig
from dnax.plugins.toolkit.builder import build_network
from dnax.plugins.toolkit.supernet import check_supernet

BLOCK = dnax.BlockSpec(0, 1, 8, 16, 2, 16, 8)


def _space() -> MBConvSpace:
    return MBConvSpace(MBConvSpaceConfig(
        preset="custom", kernels=(3, 5), expansions=(3.0, 6.0), stem_size=8,
        stem_stage=("ds_r1_k3_s1_e1_c8",), num_features=32,
        blocks=(BlockConfig((CellConfig(1), CellConfig(3, 24))),)))


# --- a third-party supernet: plain nn.Modules, none of the toolkit's classes ------------------


class ThirdPartyCell(nn.Module):
    def __init__(self, depth: int, ops: int, width: int = 4, exit: bool = True):
        super().__init__()
        self.enter = nn.Conv2d(3, width, 1)
        self.layers = nn.ModuleList(nn.ModuleList(nn.Conv2d(width, width, 3, padding=1)
                                                  for _ in range(ops)) for _ in range(depth))
        if exit:
            self.exit = nn.Conv2d(width, 3, 1)

    def forward(self, x, ops):
        x = self.enter(x)
        for layer, o in zip(self.layers, ops, strict=True):
            x = layer[o](x)
        return self.exit(x)


class ThirdPartySupernet(nn.Module):
    def __init__(self, cells):
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x, cell, ops):
        return self.cells[cell](x, ops)


def _specs(*shapes: tuple[int, int]) -> tuple[dnax.CellSpec, ...]:
    return tuple(dnax.CellSpec(i, depth, 4, tuple(f"op{o}" for o in range(ops)))
                 for i, (depth, ops) in enumerate(shapes))


def test_toolkit_supernet_meets_the_contract():
    space = _space()
    net = space.build_supernet(BLOCK)
    # by hand: cell 0 has 1 layer, cell 1 has 3, each layer 2 kernels x 2 expansions = 4 ops
    assert dnax.supernet_shape(net) == ((4,), (4, 4, 4))
    check_supernet(net, space.cells(BLOCK), "space")  # no error


def test_third_party_module_supernet_meets_the_contract():
    net = ThirdPartySupernet([ThirdPartyCell(2, 3), ThirdPartyCell(1, 5)])
    assert dnax.supernet_shape(net) == ((3, 3), (5,))
    check_supernet(net, _specs((2, 3), (1, 5)), "space")
    assert net(torch.zeros(1, 3, 4, 4), 0, (2, 1)).shape == (1, 3, 4, 4)


def test_plain_python_supernet_meets_the_contract():
    class Cell:
        enter = exit = staticmethod(lambda x: x)

        def __init__(self, layers):
            self.layers = layers

    class Net:
        cells = [Cell([[abs, abs]]), Cell([[abs], [abs], [abs]])]

        def __call__(self, x, cell, ops):
            return x

    assert dnax.supernet_shape(Net()) == ((2,), (1, 1, 1))


@pytest.mark.parametrize(("net", "specs", "message"), [
    (ThirdPartySupernet([ThirdPartyCell(2, 3, exit=False)]), _specs((2, 3)),
     "build_supernet must return a supernet with one cell per CellSpec (1)"),
    (ThirdPartySupernet([ThirdPartyCell(2, 3)]), _specs((2, 3), (1, 3)),
     "one cell per CellSpec (2)"),
    (nn.Conv2d(3, 3, 1), _specs((1, 1)), "one cell per CellSpec (1)"),
    (ThirdPartySupernet([ThirdPartyCell(2, 3), ThirdPartyCell(1, 4)]), _specs((2, 3), (1, 5)),
     "cell 1 has layers x ops (4,), its CellSpec says (5,)"),
    (ThirdPartySupernet([ThirdPartyCell(3, 2)]), _specs((2, 2)),
     "cell 0 has layers x ops (2, 2, 2), its CellSpec says (2, 2)"),
])
def test_contract_check_refuses_wrong_shapes(net, specs, message):
    with pytest.raises(dnax.PluginError, match=r"^space: ") as e:
        check_supernet(net, specs, "space")
    assert message in str(e.value) and "\n" not in str(e.value)


# --- ONNX export with the installed torch -------------------------------------------------------


def test_onnx_export_with_installed_torch_matches_onnxruntime(tmp_path: Path):
    onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install 'dnax[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'dnax[onnx]'")
    from dnax.plugins.retrainers.export import export_onnx

    space = _space()
    torch.manual_seed(0)
    model = build_network([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k5_s2_e6_c16", "ir_r1_k3_s1_e3_c16"]],
                          10, space.model_kwargs(), stem_size=8, num_features=32).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so the logits are not ~0
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = export_onnx(model, tmp_path / "m.onnx", 32)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == [
        "logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # not the export's 2
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": x.numpy()})[0]
    assert got.shape == (5, 10)
    assert want.std() > 1e-2  # a meaningful comparison
    assert abs(got - want).max() < 1e-4 * max(1.0, abs(want).max())


def test_running_python_is_a_supported_one():
    """The classifiers list the Pythons CI runs; the one running this test must be among them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
              if c.startswith("Programming Language :: Python :: 3.")}
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in tested
