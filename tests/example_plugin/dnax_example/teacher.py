"""A plain CNN teacher: stem, then stages of 3x3 conv-BN-ReLU; every stage after the first is a
searched block. It trains itself on the pipeline's data when no weights are given."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from attrs import field, frozen
from torch import nn

import dnax


@frozen
class TinyCNNConfig:
    """A plain CNN teacher."""

    widths: tuple[int, ...] = field(default=(16, 24, 32), validator=dnax.positive,
                                    metadata={"help": "channels per stage (the first is fixed)"})
    epochs: int = field(default=3, validator=dnax.positive,
                        metadata={"help": "training epochs when no weights are given"})
    lr: float = field(default=3e-3, validator=dnax.positive, metadata={"help": "Adam lr"})
    batch_size: int = field(default=64, validator=dnax.positive, metadata={"help": "batch size"})
    weights: Path | None = field(default=None, validator=dnax.existing_path,
                                 metadata={"help": "trained weights (safetensors)"})
    stem_stride: int = field(default=1, validator=dnax.positive, metadata={
        "help": "stride of the stem; 2 halves the input as the stem of the network the convs "
                "space builds does (timm's), so that network's blocks see the teacher's sizes"})


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinyCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...], num_classes: int, stem_stride: int = 1):
        super().__init__()
        self.stem = _conv(3, widths[0], stem_stride)
        self.stages = nn.ModuleList(
            _conv(cin, cout, 1 if i == 0 else 2)
            for i, (cin, cout) in enumerate(zip((widths[0], *widths), widths, strict=False)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(widths[-1], num_classes))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stages[0](self.stem(x))
        out = [x]
        for stage in self.stages[1:]:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])


class TinyCNNTeacher(dnax.Teacher):
    """A plain CNN teacher (example plugin): stages after the first are searched."""

    Config = TinyCNNConfig

    def _network(self, num_classes: int) -> TinyCNN:
        return TinyCNN(self.config.widths, num_classes, self.config.stem_stride)

    def blocks(self, resolution: int) -> tuple[dnax.BlockSpec, ...]:
        model = self._network(2).eval()
        with torch.no_grad():
            feats = model.features(torch.zeros(1, 3, resolution, resolution))
        return tuple(
            dnax.BlockSpec(i, i + 1, a.shape[1], b.shape[1], a.shape[-1] // b.shape[-1],
                           a.shape[-1], b.shape[-1])
            for i, (a, b) in enumerate(itertools.pairwise(feats)))

    def data_config(self, resolution: int) -> dnax.DataConfig:
        return dnax.DataConfig((3, resolution, resolution), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def prepare(self, ctx: dnax.StageContext) -> dnax.TeacherResult:
        num_classes = ctx.plugins.data.num_classes
        model = self._network(num_classes).to(ctx.device)
        weights = self.config.weights
        if weights is None:
            self._fit(ctx, model)
            ctx.run_dir.save_tensors("teacher/teacher.safetensors", model.state_dict(),
                                     kind="teacher")
            weights_ref = "teacher/teacher.safetensors"
        else:
            tensors, _ = dnax.load_safetensors(weights)
            model.load_state_dict(tensors)
            weights_ref = str(weights)
        top1 = self._accuracy(ctx, model)
        params = sum(p.numel() for p in model.parameters())
        return dnax.TeacherResult("tinycnn", weights_ref, num_classes,
                                  self.blocks(ctx.resolution), self.data_config(ctx.resolution),
                                  {"top1": 100 * top1, "params": float(params)})

    def _fit(self, ctx: dnax.StageContext, model: nn.Module) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=self.config.lr)
        loader = ctx.loader("train", self.config.batch_size, shuffle=True)
        model.train()
        for epoch in range(self.config.epochs):
            for step, (x, y) in enumerate(loader):
                loss = nn.functional.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.progress(f"teacher epoch {epoch + 1}/{self.config.epochs}", step + 1,
                             len(loader), loss=loss.item())

    @torch.no_grad()
    def _accuracy(self, ctx: dnax.StageContext, model: nn.Module) -> float:
        model.eval()
        right = total = 0
        for x, y in ctx.loader("val", 256):
            right += (model(x.to(ctx.device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
        return right / max(total, 1)

    def load(self, ctx: dnax.StageContext, result: dnax.TeacherResult) -> nn.Module:
        model = self._network(result.num_classes)
        path = Path(result.weights)
        tensors, _ = dnax.load_safetensors(path if path.is_absolute()
                                           else ctx.run_dir.path(result.weights))
        model.load_state_dict(tensors)
        return model.to(ctx.device).eval()

    @torch.no_grad()
    def block_features(self, model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        return model.features(images)
