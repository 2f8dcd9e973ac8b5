"""The supernet contract, as code: what a block trainer writes and an evaluator reads.

A block supernet holds ``cells``; a cell runs ``exit(layers[n-1][o](... layers[0][o](enter(x))))``
with one op index ``o`` per layer. ``enter`` and ``exit`` map the teacher's widths to the cell's
and back (adapters, not part of any candidate). The evaluator's prefix-shared tree walk relies on
exactly this shape. Extend :class:`Cell` and :class:`BlockSupernet`, or meet the protocols.

:func:`save_supernet` writes a block's weights with the metadata :func:`load_supernet` checks
(the block, the space's fingerprint), so any trainer that saves with it can be ranked by any
evaluator that loads with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

import dnax

#: ``format`` of a block supernet's safetensors file
KIND = "supernet"


#: the contract's protocols live in the kernel (``dnax.Supernet``, ``dnax.SupernetCell``)
Supernet = dnax.Supernet
SupernetCell = dnax.SupernetCell


class Cell(nn.Module):
    """A cell: ``exit(layers[n-1][o](... layers[0][o](enter(x))))``."""

    def __init__(self, enter: nn.Module, layers: Sequence[Sequence[nn.Module]], exit: nn.Module):
        super().__init__()
        self.enter = enter
        self.layers = nn.ModuleList(nn.ModuleList(ops) for ops in layers)
        self.exit = exit

    def forward(self, x: torch.Tensor, ops: Sequence[int]) -> torch.Tensor:
        x = self.enter(x)
        for layer, o in zip(self.layers, ops, strict=True):
            x = layer[o](x)
        return self.exit(x)


class BlockSupernet(nn.Module):
    """Every op of every layer of every cell of one block; ``forward(x, cell, ops)`` runs a path."""

    def __init__(self, cells: Sequence[Cell]):
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor, cell: int, ops: Sequence[int]) -> torch.Tensor:
        return self.cells[cell](x, ops)


def adapter(in_chs: int, out_chs: int) -> nn.Module:
    """1x1 conv + BatchNorm from ``in_chs`` to ``out_chs``; the identity when they match."""
    if in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))


def check_supernet(net: Any, cells: Sequence[dnax.CellSpec], where: str) -> None:
    """Refuse (PluginError) a supernet that does not have the shape ``cells`` describe."""
    shape = dnax.supernet_shape(net)
    if shape is None or len(shape) != len(cells):
        raise dnax.PluginError(f"{where}: build_supernet must return a supernet with one cell "
                               f"per CellSpec ({len(cells)}), each with enter, layers[j][o], "
                               "exit (see dnax.plugins.toolkit.supernet)")
    for spec, got in zip(cells, shape, strict=True):
        want = (len(spec.ops),) * spec.depth
        if got != want:
            raise dnax.PluginError(f"{where}: cell {spec.index} has layers x ops {got}, its "
                                   f"CellSpec says {want}")


def save_supernet(run_dir: dnax.RunDir, rel: str, net: nn.Module, block: dnax.BlockSpec,
                  space_hash: str, **metadata: str) -> None:
    """Write ``net``'s weights with the block and space fingerprint :func:`load_supernet`
    checks (``metadata``: more strings, e.g. epoch and step)."""
    run_dir.save_tensors(rel, net.state_dict(), kind=KIND, metadata={
        "block": json.dumps(attrs.asdict(block)), "space_hash": space_hash, **metadata})


def load_supernet(ctx: dnax.StageContext, rel: str, block: dnax.BlockSpec) -> nn.Module:
    """The space's supernet of ``block`` with the weights of ``rel``, on ``ctx.device`` in eval
    mode; one ArtifactError when the file was written for another space, block or shape."""
    space = ctx.plugins.space
    path = ctx.run_dir.path(rel)
    net = space.build_supernet(block)
    check_supernet(net, space.cells(block), f"$.space: {type(space).__name__}")
    tensors, meta = ctx.run_dir.load_tensors(rel, kind=KIND,
                                             expect={"space_hash": space.fingerprint()})
    want = json.dumps(attrs.asdict(block))
    if "block" in meta and meta["block"] != want:  # the same shapes, another block
        raise dnax.ArtifactError(f"{path}: was trained for another block ({meta['block']}), "
                                 f"not block {block.index} ({want}); re-run with --force train")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise dnax.ArtifactError(f"{path}: does not fit the supernet of block {block.index} "
                                 f"({first})") from None
    return net.to(ctx.device).eval()


def metadata(run_dir: dnax.RunDir, rel: str) -> Mapping[str, str]:
    """The string metadata of a saved supernet (block, space_hash, epoch, step...)."""
    return run_dir.load_tensors(rel, kind=KIND)[1]
