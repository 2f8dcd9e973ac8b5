"""The prefix-shared tree walk that scores every candidate of a cell.

Within a cell, candidates that share their first j ops share the first j layers. A depth-first
walk over the cell's tree of choices computes each prefix's activations once, and, when BatchNorm
is recalibrated, each layer's statistics once per prefix (they depend only on the layers before
it). Only the activations of the current path are kept, so memory grows with the depth, not with
the number of candidates. :func:`plain_cell` is the per-candidate loop it must agree with.

Scores stay on the device: each leaf adds its three sums into one tensor, read once per block.
A group's scoring batches run as one batch per node (up to ``max_batch`` images per forward):
in eval mode every layer is per-image, so the scores do not depend on the batching, and a node
is one launch per layer instead of one per batch. Recalibration batches keep their own batches
(their batch statistics depend on them).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from attrs import field, frozen
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dnax.plugins.toolkit.training import amp_dtype, autocast

#: the scores of every candidate, in the order of the columns :func:`walk_cell` returns
METRICS: tuple[str, ...] = ("mse", "nmse", "nmae")

Normalise = Literal["channel", "global"]
Recalib = Literal["train", "same", "separate", "off"]

#: with ``normalise="channel"``, each channel's std is floored at this share of the std of the
#: whole teacher output (the ``global`` normaliser): no channel weighs more than 10x it
CHANNEL_STD_FLOOR = 0.1

#: the most scoring images one forward of the walk takes (a group's batches are concatenated up
#: to it): the official 16 x 64 held-out images in one
MAX_BATCH = 1024


@frozen
class Group:
    """Images walked together: BatchNorm statistics are recomputed from ``recal`` (pooled over
    its batches, none when empty), then ``inputs`` are scored against ``targets``."""

    inputs: tuple[Tensor, ...] = field(converter=tuple)
    targets: tuple[Tensor, ...] = field(converter=tuple)
    recal: tuple[Tensor, ...] = field(default=(), converter=tuple)


def make_groups(inputs: Sequence[Tensor], targets: Sequence[Tensor], *,
                recal: Recalib = "same", recal_inputs: Sequence[Tensor] = ()) -> list[Group]:
    """Groups for the recalibration modes.

    ``train`` and ``separate``: ``recal_inputs`` (block inputs of training images, or of
    held-out images that are not scored) recalibrate once for all scoring batches, one group;
    ``same``: each scoring batch recalibrates on itself (one group per batch); ``off``: the
    trained statistics are used.
    """
    if recal == "same":
        return [Group((x,), (t,), (x,)) for x, t in zip(inputs, targets, strict=True)]
    if recal in ("train", "separate"):
        if not recal_inputs:
            raise ValueError(f"recal={recal!r} needs recal_inputs")
        return [Group(inputs, targets, recal_inputs)]
    if recal != "off":
        raise ValueError(f"unknown recal mode {recal!r}")
    return [Group(inputs, targets)]


def score_weights(targets: Sequence[Tensor], normalise: Normalise = "global") -> Tensor:
    """Weights ``W`` (3 x C) so that ``W @ [sq, sq, abs]`` sums give mse, nmse and nmae.

    With per-channel sums ``sq_c`` of (s-t)^2 and ``ab_c`` of |s-t| over all ``targets``:
    mse = sum(sq_c) / n, nmse = sum(sq_c / var_c) / n, nmae = sum(ab_c / std_c) / n, with ``n``
    the number of target elements and var/std of the teacher's output over all of it
    (``global``: nmae is the official mean |s - t| / std(t)) or per channel (``channel``: the
    mean over channels of each channel's normalised error). A channel's std is floored at
    :data:`CHANNEL_STD_FLOOR` x the global std, so a near-constant channel cannot dominate.
    """
    dims = _reduce_dims(targets[0])
    t64 = [t.detach().double() for t in targets]
    count = sum(t.numel() for t in t64)
    per = count / t64[0].shape[1]
    mean = sum(t.sum(dims) for t in t64) / per
    var = sum(((t - _bcast(mean, t)) ** 2).sum(dims) for t in t64) / per
    gvar = (var + (mean - mean.mean()) ** 2).mean()  # over the whole tensor
    if normalise == "global":
        var = gvar.expand_as(var)
    elif normalise == "channel":
        var = var.clamp_min(float(gvar) * CHANNEL_STD_FLOOR ** 2)
    else:
        raise ValueError(f"unknown normalise {normalise!r} (channel, global)")
    var = var.clamp_min(1e-30)  # an all-constant teacher output
    ones = torch.ones_like(var)
    w = torch.stack((ones, 1 / var, var.rsqrt())) / count
    return w.to(device=targets[0].device, dtype=torch.float32)


def cell_shape(cell: nn.Module) -> tuple[int, ...]:
    """The number of ops of each layer of ``cell`` (a supernet cell: ``.layers[j][o]``)."""
    return tuple(len(ops) for ops in cell.layers)


def tree_nodes(shape: Sequence[int]) -> dict[tuple[int, int], int]:
    """How often :func:`walk_cell` runs each module of a cell of ``shape`` per group: keys
    ``(j, o)`` for op ``o`` of layer ``j``, ``(-1, 0)`` for ``enter`` and ``(len(shape), 0)``
    for ``exit`` with the leaf's scoring. Op ``o`` of layer ``j`` runs once per prefix of the
    layers before it."""
    nodes = {(-1, 0): 1, (len(shape), 0): math.prod(shape)}
    for j, n in enumerate(shape):
        nodes.update(((j, o), math.prod(shape[:j])) for o in range(n))
    return nodes


def batched(xs: Sequence[Tensor], max_batch: int | None = MAX_BATCH) -> list[Tensor]:
    """``xs`` concatenated along the batch and split into tensors of at most ``max_batch``
    images (``None``: one tensor)."""
    if len(xs) <= 1 and (max_batch is None or all(len(x) <= max_batch for x in xs)):
        return list(xs)
    whole = torch.cat(list(xs))
    return list(whole.split(max_batch)) if max_batch is not None else [whole]


def walk_cell(cell: nn.Module, groups: Sequence[Group], weights: Tensor, *,
              prefixes: Sequence[tuple[int, ...]] | None = None, amp: bool = False,
              max_batch: int | None = MAX_BATCH,
              progress: Callable[[float], None] | None = None) -> Tensor:
    """Score every candidate of ``cell``: a tensor (candidates x 3) in :data:`METRICS` order,
    rows in ``itertools.product`` order of the op indices (first layer most significant).

    ``prefixes`` restricts the walk to the sub-trees under those op prefixes (sharding); the
    rows of the other candidates stay zero. A group's scoring images run ``max_batch`` at a time
    (``None``: all at once). ``progress`` is called with the share of the walk done after each
    first-layer sub-tree. BatchNorm buffers are restored afterwards. Nothing is read back to
    the host.
    """
    shape = cell_shape(cell)
    device = weights.device
    acc = torch.zeros(math.prod(shape), len(METRICS), device=device)
    wanted = None
    depth = 0
    if prefixes is not None:
        depth = max((len(p) for p in prefixes), default=0)
        wanted = {p[:k] for p in prefixes for k in range(len(p) + 1)}
        if not prefixes:
            return acc
    bns: dict[int, list[_BatchNorm]] = {}

    targets = [batched(g.targets, max_batch) for g in groups]

    def node(j: int, row: int, path: tuple[int, ...], rec: list[Tensor] | None,
             xs: list[Tensor], g: int) -> None:
        if j == len(shape):
            if rec is not None:
                _recalibrate(cell.exit, rec, bns)
            total = sum(_sums(cell.exit(x), t) for x, t in zip(xs, targets[g], strict=True))
            acc[row] += (total * weights).sum(1)
            return
        for o, layer in enumerate(cell.layers[j]):
            sub = (*path, o)
            if wanted is not None and len(sub) <= depth and sub not in wanted:
                continue
            nxt = None if rec is None else _recalibrate(layer, rec, bns)
            node(j + 1, row * shape[j] + o, sub, nxt, [layer(x) for x in xs], g)
            if j == 0 and progress is not None:
                progress((g + (o + 1) / len(cell.layers[0])) / len(groups))

    with _preserved(cell), torch.no_grad(), autocast(device, amp_dtype(device, amp)):
        for g, group in enumerate(groups):
            rec = _recalibrate(cell.enter, list(group.recal), bns) if group.recal else None
            node(0, 0, (), rec, [cell.enter(x) for x in batched(group.inputs, max_batch)], g)
    return acc


def plain_cell(supernet: nn.Module, index: int, groups: Sequence[Group], weights: Tensor, *,
               amp: bool = False) -> Tensor:
    """The per-candidate loop :func:`walk_cell` replaces: for each candidate, recalibrate its
    path (enter, one op per layer, exit) and score it through ``supernet(x, index, ops)``."""
    cell = supernet.cells[index]
    shape = cell_shape(cell)
    device = weights.device
    acc = torch.zeros(math.prod(shape), len(METRICS), device=device)
    bns: dict[int, list[_BatchNorm]] = {}
    with _preserved(supernet), torch.no_grad(), autocast(device, amp_dtype(device, amp)):
        for group in groups:
            for row, ops in enumerate(itertools.product(*map(range, shape))):
                if group.recal:
                    path = [cell.enter, *(cell.layers[j][o] for j, o in enumerate(ops)),
                            cell.exit]
                    norms = [bn for m in path for bn in _bns(m, bns)]
                    _reset(norms, True)
                    for x in group.recal:
                        supernet(x, index, ops)
                    _reset(norms, False)
                total = sum(_sums(supernet(x, index, ops), t)
                            for x, t in zip(group.inputs, group.targets, strict=True))
                acc[row] += (total * weights).sum(1)
    return acc


def shard_prefixes(shapes: Sequence[tuple[int, ...]], process_rank: int, world_size: int,
                   depth: int = 2) -> list[list[tuple[int, ...]] | None]:
    """Split the cells' sub-trees (op prefixes of ``depth`` layers) across processes.

    Longest-first greedy on the number of leaves under each prefix, deterministic, so every process
    computes the same split. Returns, per cell, this process's prefixes (``None``: the whole cell,
    when there is one process).
    """
    if world_size <= 1:
        return [None] * len(shapes)
    units = []
    for c, shape in enumerate(shapes):
        p = min(depth, len(shape))
        leaves = math.prod(shape[p:])
        units += [(leaves, c, pre) for pre in itertools.product(*map(range, shape[:p]))]
    units.sort(key=lambda u: -u[0])
    loads = [(0, r) for r in range(world_size)]
    mine: list[list[tuple[int, ...]]] = [[] for _ in shapes]
    for leaves, c, pre in units:
        load, r = heapq.heappop(loads)
        if r == process_rank:
            mine[c].append(pre)
        heapq.heappush(loads, (load + leaves, r))
    return list(mine)


# --- helpers ------------------------------------------------------------------------------------

def _reduce_dims(t: Tensor) -> tuple[int, ...]:
    return (0, *range(2, t.dim()))


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(1, -1, *([1] * (like.dim() - 2)))


def _sums(s: Tensor, t: Tensor) -> Tensor:
    """Per-channel sums of (s-t)^2, (s-t)^2 and |s-t| (3 x C), in float32."""
    d = s.float() - t.float()
    dims = _reduce_dims(d)
    sq = d.square().sum(dims)
    return torch.stack((sq, sq, d.abs().sum(dims)))


def _bns(module: nn.Module, cache: dict[int, list[_BatchNorm]]) -> list[_BatchNorm]:
    found = cache.get(id(module))
    if found is None:
        found = cache[id(module)] = [m for m in module.modules()
                                     if isinstance(m, _BatchNorm) and m.track_running_stats]
    return found


def _recalibrate(module: nn.Module, inputs: list[Tensor],
                 cache: dict[int, list[_BatchNorm]]) -> list[Tensor]:
    """Reset the BatchNorm statistics of ``module``, recompute them (cumulative average) from a
    train-mode forward of ``inputs``, and return those train-mode outputs."""
    norms = _bns(module, cache)
    _reset(norms, True)
    out = [module(x) for x in inputs]
    _reset(norms, False)
    return out


def _reset(norms: list[_BatchNorm], train: bool) -> None:
    """Before a recalibration (``train``): reset the statistics and switch to batch statistics;
    after it: back to the running ones. Only the BatchNorm's own flag changes (no dropout)."""
    for bn in norms:
        if train:
            bn.reset_running_stats()
        bn.training = train


@contextlib.contextmanager
def _preserved(module: nn.Module) -> Iterator[None]:
    """Eval mode and cumulative BatchNorm momentum inside; modes, momenta and BatchNorm buffers
    as they were afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(bn.momentum, [b.clone() for b in _buffers(bn)]) for bn in norms]
    module.eval()
    for bn in norms:
        bn.momentum = None
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, (momentum, bufs) in zip(norms, saved, strict=True):
                bn.momentum = momentum
                for b, old in zip(_buffers(bn), bufs, strict=True):
                    b.copy_(old)
        for m, training in modes:
            m.training = training


def _buffers(bn: _BatchNorm) -> list[Tensor]:
    return [bn.running_mean, bn.running_var, bn.num_batches_tracked]
