"""``dnax bench rank``: time the prefix-shared tree walk against the plain per-candidate loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from dnax.plugins.toolkit.builder import build_layer
from dnax.plugins.toolkit.supernet import BlockSupernet, Cell, adapter
from dnax.plugins.toolkit.timing import time_once

from .tree import make_groups, plain_cell, score_weights, walk_cell

#: (kernel, expansion) of each op, the paper's 6 first: kernel {3,5,7} x expansion {3,6}
OPS: tuple[tuple[int, int], ...] = tuple((k, e) for e in (3, 6, 4, 2, 1) for k in (3, 5, 7))


def mbconv_layer(in_chs: int, arch: str) -> nn.Module:
    """One timm block built from its arch string, as timm's EfficientNet builds it (swish)."""
    return build_layer(arch, in_chs, {"act_layer": "swish"})[0]


def bench_supernet(depth: int = 4, ops: int = 6, *, teacher_in: int = 32, teacher_out: int = 48,
                   in_chs: int = 24, out_chs: int = 40, stride: int = 2) -> BlockSupernet:
    """A one-cell supernet of ``depth`` layers with ``ops`` MBConv ops each (SE 0.25, swish)."""
    if not 1 <= ops <= len(OPS):
        raise ValueError(f"ops must be in 1..{len(OPS)}, got {ops}")
    layers = []
    for j in range(depth):
        s = stride if j == 0 else 1
        layers.append([mbconv_layer(in_chs if j == 0 else out_chs,
                                    f"ir_r1_k{k}_s{s}_e{e}_c{out_chs}_se0.25")
                       for k, e in OPS[:ops]])
    return BlockSupernet([Cell(adapter(teacher_in, in_chs), layers,
                               adapter(out_chs, teacher_out))])


def bench_rank(depth: int = 4, ops: int = 6, *, batch_size: int = 8, batches: int = 1,
               size: int = 16, recal: Literal["same", "separate", "off"] = "same",
               device: str = "cpu", amp: bool = False, seed: int = 0,
               threads: int | None = None, progress: Callable[[str], None] | None = None
               ) -> dict[str, Any]:
    """Time :func:`walk_cell` and :func:`plain_cell` on the same random block inputs.

    A one-cell supernet of ``depth`` layers x ``ops`` ops (stride 2 on the first layer,
    ``size`` px input, ``batches`` scoring batches of ``batch_size``). ``threads`` sets torch's
    CPU threads for the run (1 keeps a busy machine's timings steady). Returns both times in
    seconds, their ratio (``speedup``) and the largest relative difference of the scores.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(depth, ops, batch_size, batches, size, recal, torch.device(device), amp,
                      seed, progress)
    finally:
        torch.set_num_threads(before)


def _bench(depth: int, ops: int, batch_size: int, batches: int, size: int, recal: str,
           dev: torch.device, amp: bool, seed: int,
           progress: Callable[[str], None] | None) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = bench_supernet(depth, ops).to(dev).eval()
    out_size = -(-size // 2)
    xs = [torch.randn(batch_size, 32, size, size, device=dev) for _ in range(batches)]
    ts = [torch.randn(batch_size, 48, out_size, out_size, device=dev) for _ in range(batches)]
    rec = [torch.randn_like(x) for x in xs] if recal == "separate" else ()
    groups = make_groups(xs, ts, recal=recal, recal_inputs=rec)
    weights = score_weights(ts)

    def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
        t = time_once(fn, device=dev)  # one synchronised call
        return t.ms / 1e3, t.output

    walk_cell(net.cells[0], groups[:1], weights, prefixes=[(0,) * depth], amp=amp)  # warm-up
    if progress:
        progress("tree walk")
    tree_s, tree = timed(lambda: walk_cell(net.cells[0], groups, weights, amp=amp))
    if progress:
        progress("plain loop")
    plain_s, plain = timed(lambda: plain_cell(net, 0, groups, weights, amp=amp))
    rel = ((tree - plain).abs() / plain.abs().clamp_min(1e-12)).max().item()
    return {
        "depth": depth, "ops": ops, "candidates": ops ** depth, "batch_size": batch_size,
        "batches": batches, "size": size, "recal": recal, "device": str(dev),
        "threads": torch.get_num_threads(), "tree_s": tree_s, "plain_s": plain_s,
        "speedup": plain_s / tree_s, "max_rel_diff": rel,
    }
