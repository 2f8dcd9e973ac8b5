"""``dnax bench rank``: time the prefix-shared tree walk against the plain per-candidate loop and
against its floor (:func:`walk_floor`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dnax.plugins.evaluators.tree import (
    MAX_BATCH,
    Group,
    _bns,
    _preserved,
    _reset,
    _sums,
    cell_shape,
    make_groups,
    plain_cell,
    score_weights,
    tree_nodes,
    walk_cell,
)
from dnax.plugins.toolkit.builder import build_layer
from dnax.plugins.toolkit.supernet import BlockSupernet, Cell, adapter
from dnax.plugins.toolkit.timing import median_ms, time_once
from dnax.plugins.toolkit.training import amp_dtype, autocast

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


def floor_shapes(cell: nn.Module, inputs: Tensor, recal: Tensor | None = None
                 ) -> dict[Hashable, tuple[int, Callable[[], Any]]]:
    """The distinct forwards of a walk over ``cell``, each with how often the walk runs it:
    {signature: (node count, one forward)}. A forward takes all ``inputs`` as one batch (and,
    with ``recal``, a train-mode forward of those images: the node's recalibration); ops of the
    same shape (type, parameter shapes, input shape) share one entry, their counts summed.
    ``exit``'s forward includes the leaf's scoring against zero targets. Call inside
    :func:`_preserved` and ``torch.no_grad()``."""
    shape = cell_shape(cell)
    acts, recs = [inputs, cell.enter(inputs)], [recal]
    if recal is not None:
        recs.append(cell.enter(recal))
    for j in range(len(shape)):  # inputs of each layer: the path of op 0
        acts.append(cell.layers[j][0](acts[-1]))
        if recal is not None:
            recs.append(cell.layers[j][0](recs[-1]))
    bns: dict[int, list[Any]] = {}
    found: dict[Hashable, tuple[int, Callable[[], Any]]] = {}
    for (j, o), count in tree_nodes(shape).items():
        module = (cell.enter if j < 0 else cell.exit if j == len(shape)
                  else cell.layers[j][o])
        x, r = acts[j + 1], recs[j + 1] if recal is not None else None
        sig = (j == len(shape), type(module).__name__, tuple(x.shape),
               tuple(tuple(p.shape) for p in module.parameters()))
        if sig in found:
            found[sig] = (found[sig][0] + count, found[sig][1])
            continue

        def forward(module: nn.Module = module, x: Tensor = x, r: Tensor | None = r,
                    leaf: bool = j == len(shape)) -> Any:
            if r is not None:
                norms = _bns(module, bns)
                _reset(norms, True)
                module(r)
                _reset(norms, False)
            y = module(x)
            return _sums(y, torch.zeros_like(y)).sum(1) if leaf else y

        found[sig] = (count, forward)
    return found


def walk_floor(cell: nn.Module, groups: Sequence[Group], *, amp: bool = False,
               repeats: int = 3, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The compute floor of :func:`walk_cell` over ``groups``: the layer forwards it must do,
    each distinct op shape timed once (median of ``repeats``) on all scoring images as one batch
    (plus its train-mode forward of all recalibration images when BatchNorm is recalibrated),
    times the walk's nodes of that shape (:func:`tree_nodes`: enter, every op of every prefix,
    exit with scoring at every leaf), summed. Returns ``floor_s``, ``nodes`` and ``shapes``."""
    xs = torch.cat([x for g in groups for x in g.inputs])
    recs = [r for g in groups for r in g.recal]
    dev = torch.device(device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_preserved(cell))
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast(dev, amp_dtype(dev, amp)))
        found = floor_shapes(cell, xs, torch.cat(recs) if recs else None)
        fns = {k: (lambda _t, fn=fn: fn()) for k, (_, fn) in found.items()}
        ms = median_ms(fns, repeats=repeats, warmup=1, device=dev)
    floor = sum(count * ms[k].ms for k, (count, _) in found.items()) / 1e3
    return {"floor_s": floor, "nodes": sum(c for c, _ in found.values()),
            "shapes": len(found)}


def bench_rank(depth: int = 4, ops: int = 6, *, batch_size: int = 8, batches: int = 1,
               size: int = 16, recal: Literal["same", "train", "separate", "off"] = "same",
               device: str = "cpu", amp: bool = False, seed: int = 0,
               max_batch: int | None = MAX_BATCH, threads: int | None = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time :func:`walk_cell` against :func:`plain_cell` and :func:`walk_floor` on the same
    random block inputs.

    A one-cell supernet of ``depth`` layers x ``ops`` ops (stride 2 on the first layer,
    ``size`` px input, ``batches`` scoring batches of ``batch_size``; ``recal="train"``: one
    recalibration batch of its own, as the evaluator's default). ``max_batch`` is the walk's.
    ``threads`` sets torch's CPU threads for the run (1 keeps a busy machine's timings steady).
    Returns the times in seconds, ``speedup`` (plain / tree), ``over_floor`` (tree / floor)
    and the largest relative difference of the scores.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(depth, ops, batch_size, batches, size, recal, torch.device(device), amp,
                      seed, max_batch, progress)
    finally:
        torch.set_num_threads(before)


def _bench(depth: int, ops: int, batch_size: int, batches: int, size: int, recal: str,
           dev: torch.device, amp: bool, seed: int, max_batch: int | None,
           progress: Callable[[str], None] | None) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = bench_supernet(depth, ops).to(dev).eval()
    out_size = -(-size // 2)
    xs = [torch.randn(batch_size, 32, size, size, device=dev) for _ in range(batches)]
    ts = [torch.randn(batch_size, 48, out_size, out_size, device=dev) for _ in range(batches)]
    rec = ([torch.randn_like(x) for x in xs] if recal == "separate"
           else [torch.randn_like(xs[0])] if recal == "train" else [])
    groups = make_groups(xs, ts, recal=recal, recal_inputs=rec)  # type: ignore[arg-type]
    weights = score_weights(ts)

    def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
        t = time_once(fn, device=dev)  # one synchronised call
        return t.ms / 1e3, t.output

    cell = net.cells[0]
    walk_cell(cell, groups[:1], weights, prefixes=[(0,) * depth], amp=amp,
              max_batch=max_batch)  # warm-up
    if progress:
        progress("tree walk")
    tree_s, tree = timed(lambda: walk_cell(cell, groups, weights, amp=amp, max_batch=max_batch))
    if progress:
        progress("floor")
    floor = walk_floor(cell, groups, amp=amp, device=dev)
    if progress:
        progress("plain loop")
    plain_s, plain = timed(lambda: plain_cell(net, 0, groups, weights, amp=amp))
    rel = ((tree - plain).abs() / plain.abs().clamp_min(1e-12)).max().item()
    return {
        "depth": depth, "ops": ops, "candidates": ops ** depth, "batch_size": batch_size,
        "batches": batches, "size": size, "recal": recal, "device": str(dev),
        "max_batch": max_batch, "threads": torch.get_num_threads(), "tree_s": tree_s,
        "plain_s": plain_s, "floor_s": floor["floor_s"], "speedup": plain_s / tree_s,
        "over_floor": tree_s / floor["floor_s"], "floor_nodes": floor["nodes"],
        "floor_shapes": floor["shapes"], "max_rel_diff": rel,
    }
