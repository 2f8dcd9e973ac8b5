"""Stitch the selected network from what the search trained: each searched layer's weights from
its block supernet, stem and head from the teacher where their shapes match.

Between blocks the supernets carry adapters: block b's cell ends in ``exit`` (cell width to the
teacher's) and block b+1's cell starts with ``enter`` (teacher width to its input width). Both
are 1x1 conv + BatchNorm, in eval form affine maps ``x -> M x + c``. The stitched network has no
adapters: ``enter`` after ``exit`` is folded into the next layer's pointwise convolution
(``W -> W M``) and its BatchNorm (running mean minus ``W c``), the last ``exit`` into the
teacher's head convolution. That is exact unless a residual crosses the adapters (a first layer
whose input and output widths match): there the skip adds the unadapted input, and the layer is
reported approximate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from attrs import define, field
from torch import Tensor, nn

import dnax

Affine = tuple[Tensor, Tensor]  # (M, c): x -> M x + c over channels, float64


@define
class StitchReport:
    """What the stitched network's weights came from."""

    teacher: list[str] = field(factory=list)  # parts copied from the teacher
    fresh: list[str] = field(factory=list)  # parts left at their initial weights, with why
    folded: list[str] = field(factory=list)  # adapters folded, and into which layer
    approximate: list[str] = field(factory=list)  # layers a residual crosses adapters at
    stem_from_teacher: bool = False
    inexact: set[int] = field(factory=set)  # blocks with an approximate or a fresh layer

    def lines(self) -> list[str]:
        return ([f"from the teacher: {', '.join(self.teacher)}"] if self.teacher else []) + [
            f"fresh: {x}" for x in self.fresh] + [f"folded: {x}" for x in self.folded] + [
            f"approximate: {x}" for x in self.approximate]


def affine(adapter: nn.Module) -> Affine | None:
    """The eval-mode map of an adapter (1x1 conv + BatchNorm), None for the identity."""
    if isinstance(adapter, nn.Identity):
        return None
    conv, bn = adapter[0], adapter[1]
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and isinstance(bn, nn.BatchNorm2d)):
        raise dnax.PluginError(f"$.space: an adapter must be 1x1 conv + BatchNorm, got {adapter}")
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    m = scale[:, None] * conv.weight.double()[:, :, 0, 0]
    c = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        c = c + scale * conv.bias.double()
    return m, c


def compose(first: Affine | None, second: Affine | None) -> Affine | None:
    """``second`` after ``first``."""
    if first is None or second is None:
        return first if second is None else second
    return second[0] @ first[0], second[0] @ first[1] + second[1]


@torch.no_grad()
def fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d, adapt: Affine) -> None:
    """Make ``bn(conv(x))`` compute ``bn(conv(M x + c))``: ``conv`` (1x1, no bias) takes
    ``M``'s input width, ``bn``'s running mean absorbs ``conv(c)``."""
    m, c = adapt
    w = conv.weight.double()[:, :, 0, 0]
    conv.weight = nn.Parameter((w @ m).to(conv.weight.dtype)[:, :, None, None])
    conv.in_channels = m.shape[1]
    bn.running_mean -= (w @ c).to(bn.running_mean.dtype)


def _pointwise_first(layer: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, bn = getattr(layer, "conv_pw", None), getattr(layer, "bn1", None)
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and conv.bias is None and isinstance(bn, nn.BatchNorm2d)):
        raise dnax.PluginError(f"finetune: cannot fold an adapter into {type(layer).__name__} "
                               "(it needs a first 1x1 conv without bias + BatchNorm: timm's "
                               "InvertedResidual)")
    return conv, bn


def _fits(dst: nn.Module, src: nn.Module) -> bool:
    mine, theirs = dst.state_dict(), src.state_dict()
    return mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine)


def _width(cell: nn.Module, j: int, o: int) -> int:
    return _pointwise_first(cell.layers[j][o])[0].in_channels


def _copy(dst: nn.Module, src: nn.Module, where: str) -> None:
    if not _fits(dst, src):
        raise dnax.PluginError(f"finetune: {where} of the supernet does not fit the network's "
                               "layer (another builder?)")
    dst.load_state_dict(src.state_dict())


def stem_keys(model: nn.Module, stages: int) -> list[str]:
    """The state keys of the stem conv, its norm and the first ``stages`` stages."""
    return [k for k in model.state_dict() if k.split(".")[0] in ("conv_stem", "bn1")
            or (k.startswith("blocks.") and int(k.split(".")[1]) < stages)]


def head_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.split(".")[0] in ("conv_head", "bn2", "classifier")]


def _take(model: nn.Module, teacher: nn.Module, keys: Sequence[str]) -> str | None:
    """Copy ``keys`` from the teacher when every one has the network's shape; else why not."""
    mine, theirs = model.state_dict(), teacher.state_dict()
    for k in keys:
        if k not in theirs:
            return f"the teacher has no {k}"
        if theirs[k].shape != mine[k].shape:
            return f"{k} is {tuple(theirs[k].shape)} in the teacher, {tuple(mine[k].shape)} here"
    model.load_state_dict({k: theirs[k] for k in keys}, strict=False)
    return None


@torch.no_grad()
def stitch(model: nn.Module, teacher: nn.Module | None, supernets: Sequence[nn.Module],
           chosen: Sequence[dnax.Candidate], specs: Sequence[dnax.BlockSpec], *,
           fold: bool = True) -> StitchReport:
    """Load ``model`` (timm ``EfficientNet`` whose last ``len(chosen)`` stages are the chosen
    cells) from the block ``supernets``, and stem and head from ``teacher`` where they fit.
    ``fold=False`` drops the adapters instead of folding them (for tests: not exact)."""
    report = StitchReport()
    k = len(model.blocks) - len(chosen)
    stem_from_teacher = False
    if teacher is None:
        report.fresh.append("stem and head (no teacher network)")
    elif specs[0].stage != k:
        report.fresh.append(f"stem (the teacher's first searched stage is {specs[0].stage}, "
                            f"the network's {k})")
    elif (why := _take(model, teacher, stem_keys(model, k))) is not None:
        report.fresh.append(f"stem ({why})")
    else:
        stem_from_teacher = report.stem_from_teacher = True
        report.teacher.append(f"stem (conv_stem, bn1, stages 0-{k - 1})" if k else "stem")
    pending = None  # the adapters between the previous cell and this block's first layer
    for b, (net, cand) in enumerate(zip(supernets, chosen, strict=True)):
        cell = net.cells[cand.cell]
        stage = model.blocks[k + b]
        if len(stage) != len(cand.ops):
            raise dnax.PluginError(f"finetune: stage {k + b} of the network has {len(stage)} "
                                   f"layers, block {b}'s candidate {len(cand.ops)}")
        enter = affine(cell.enter)
        adapt = compose(pending, enter) if (b > 0 or stem_from_teacher) else None
        for j, o in enumerate(cand.ops):
            src, dst = cell.layers[j][o], stage[j]
            if j == 0 and adapt is not None and fold:
                src = _clone(src)
                conv, bn = _pointwise_first(src)
                fold_into(conv, bn, adapt)
                what = f"exit of block {b - 1} + enter" if b else "enter"
                report.folded.append(f"block {b}: {what} into blocks.{k + b}.0.conv_pw")
            if j == 0 and not _fits(dst, src):  # timm sizes the expansion from the input width
                report.fresh.append(
                    f"blocks.{k + b}.0 (it takes {_pointwise_first(dst)[0].in_channels} "
                    f"channels, its op in the supernet {_width(cell, j, o)}: the expansion "
                    "widths differ)")
                report.inexact.add(b)
                continue
            _copy(dst, src, f"block {b} layer {j}")
        first_net, first_sup = stage[0], cell.layers[0][cand.ops[0]]
        skips = bool(getattr(first_net, "has_skip", False)), bool(getattr(first_sup, "has_skip",
                                                                           False))
        if any(skips) and not (all(skips) and adapt is None) and b not in report.inexact:
            report.inexact.add(b)
            report.approximate.append(
                f"blocks.{k + b}.0: its residual {'adds' if skips[0] else 'lacks'} the input the "
                "supernet's layer " + ("saw through adapters" if skips[1] else "did not add"))
        pending = affine(cell.exit)
    if teacher is not None:
        if specs[-1].stage != len(teacher.blocks) - 1:
            report.fresh.append("head (the teacher's last stage is not searched)")
        else:
            _head(model, teacher, pending if fold else None, report)
    return report


def _head(model: nn.Module, teacher: nn.Module, exit_: Affine | None,
          report: StitchReport) -> None:
    keys = head_keys(model)
    state = {k: v.clone() for k, v in teacher.state_dict().items() if k in keys}
    tmp = nn.Module()
    tmp.conv_head = _clone(teacher.conv_head)
    tmp.bn2 = _clone(teacher.bn2)
    if exit_ is not None:
        fold_into(tmp.conv_head, tmp.bn2, exit_)
        state.update({f"conv_head.{k}": v for k, v in tmp.conv_head.state_dict().items()})
        state.update({f"bn2.{k}": v for k, v in tmp.bn2.state_dict().items()})
    mine = model.state_dict()
    bad = [k for k in keys if k not in state or state[k].shape != mine[k].shape]
    if bad:
        report.fresh.append(f"head ({bad[0]} does not fit)")
        return
    model.load_state_dict(state, strict=False)
    report.teacher.append("head (conv_head, bn2, classifier)")
    if exit_ is not None:
        report.folded.append("exit of the last block into conv_head")


def _clone(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


@torch.no_grad()
def boundaries(model: nn.Module, images: Tensor, blocks: int) -> list[Tensor]:
    """The outputs of the network's last ``blocks`` stages (eval mode)."""
    x = model.bn1(model.conv_stem(images))
    k = len(model.blocks) - blocks
    out = []
    for i, stage in enumerate(model.blocks):
        x = stage(x)
        if i >= k:
            out.append(x)
    return out


@torch.no_grad()
def chained(model: nn.Module, supernets: Sequence[nn.Module], chosen: Sequence[dnax.Candidate],
            images: Tensor, *, stem_from_teacher: bool) -> list[Tensor]:
    """The reference :func:`boundaries` must match, block by block: block b's supernet cell
    (the previous block's exit, its enter, the chosen ops: the adapters as separate layers) on
    the stitched network's output of block b-1 (of the stem for block 0); each cell's output
    before its exit. Where every block is exact this is the supernets chained on their own
    outputs."""
    x = model.bn1(model.conv_stem(images))
    k = len(model.blocks) - len(chosen)
    for stage in model.blocks[:k]:
        x = stage(x)
    inputs = [x, *boundaries(model, images, len(chosen))[:-1]]
    out = []
    for b, (net, cand) in enumerate(zip(supernets, chosen, strict=True)):
        x = inputs[b]
        if b > 0:
            x = supernets[b - 1].cells[chosen[b - 1].cell].exit(x)
        cell = net.cells[cand.cell]
        if b > 0 or stem_from_teacher:
            x = cell.enter(x)
        for j, o in enumerate(cand.ops):
            x = cell.layers[j][o](x)
        out.append(x)
    return out


def deviations(model: nn.Module, supernets: Sequence[nn.Module],
               chosen: Sequence[dnax.Candidate], images: Tensor, *, stem_from_teacher: bool
               ) -> list[float]:
    """Per block, the largest |stitched - chained| over the largest |chained| (float32)."""
    got = boundaries(model, images, len(chosen))
    want = chained(model, supernets, chosen, images, stem_from_teacher=stem_from_teacher)
    return [float((g - w).abs().max() / w.abs().max().clamp_min(1e-30))
            for g, w in zip(got, want, strict=True)]
