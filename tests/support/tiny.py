"""A tiny teacher (a small timm EfficientNet), tiny digits and the registry and pipeline that
train the ``distill`` trainer on them in seconds: shared by the trainer's and the space's tests.
"""

from __future__ import annotations

import itertools

import torch
from attrs import field, frozen

import dnax
from dnax.plugins.spaces import mbconv
from dnax.plugins.trainers import distill

#: a small timm EfficientNet: stem + a fixed first stage, then three searched blocks
TINY_ARCH = [["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c24"],
             ["ir_r2_k3_s1_e3_c24"]]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EfficientNet(decode_arch_def(TINY_ARCH), num_classes=10, stem_size=8,
                            num_features=64, act_layer="swish")


@frozen
class TinyTeacherConfig:
    seed: int = field(default=0, metadata={"help": "init seed"})
    nan_after: int | None = field(default=None, metadata={"help": "NaN features after N calls"})


class TinyTeacher(dnax.Teacher):
    """A tiny timm EfficientNet (seeded init) cut at its stages."""

    Config = TinyTeacherConfig
    calls = 0

    def blocks(self, resolution):
        feats = self._features(tiny_model(self.config.seed).eval(),
                               torch.zeros(1, 3, resolution, resolution))
        return tuple(dnax.BlockSpec(i, i + 1, a.shape[1], b.shape[1], a.shape[-1] // b.shape[-1],
                                    a.shape[-1], b.shape[-1])
                     for i, (a, b) in enumerate(itertools.pairwise(feats)))

    def data_config(self, resolution):
        return dnax.DataConfig((3, resolution, resolution), (0.5,) * 3, (0.25,) * 3)

    def prepare(self, ctx):
        ctx.run_dir.save_tensors("teacher/tiny.safetensors", tiny_model(self.config.seed)
                                 .state_dict(), kind="teacher")
        return dnax.TeacherResult("tiny", "teacher/tiny.safetensors", 10,
                                  self.blocks(ctx.resolution), self.data_config(ctx.resolution))

    def load(self, ctx, result):
        model = tiny_model(self.config.seed)
        model.load_state_dict(ctx.run_dir.load_tensors(result.weights, kind="teacher")[0])
        return model.eval().to(ctx.device)

    def _features(self, model, images):
        with torch.no_grad():
            return model.forward_intermediates(images, indices=[1, 2, 3, 4], stop_early=True,
                                               intermediates_only=True, extra_blocks=True)

    def block_features(self, model, images):
        self.calls += 1
        feats = self._features(model, images)
        if self.config.nan_after is not None and self.calls > self.config.nan_after:
            feats = [f * float("nan") for f in feats]
        return feats


@frozen
class TinyDigitsConfig:
    limit: int = field(default=240, validator=dnax.positive, metadata={"help": "images used"})


class TinyDigits(dnax.DataSource):
    """sklearn's digits, resized and normalised; augment = random flips (global torch RNG)."""

    Config = TinyDigitsConfig

    @property
    def num_classes(self):
        return 10

    def dataset(self, split, data_config, *, augment=False):
        from sklearn.datasets import load_digits

        d = load_digits()
        n = self.config.limit
        sl = slice(0, n) if split == "train" else slice(n, n + 100)
        x = torch.tensor(d.images[sl], dtype=torch.float32)[:, None] / 16
        x = torch.nn.functional.interpolate(x, size=data_config.input_size[1:], mode="bilinear")
        x = (x.expand(-1, 3, -1, -1) - 0.5) / 0.25
        return _Flips(x, torch.tensor(d.target[sl]), augment)


class _Flips(torch.utils.data.Dataset):
    def __init__(self, x, y, augment):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.y[i])


class TinyPlugins:
    @dnax.hookimpl
    def dnax_register_data(self, register):
        register("tiny-digits", TinyDigits)

    @dnax.hookimpl
    def dnax_register_teachers(self, register):
        register("tiny", TinyTeacher)


class Recorder:
    """Records the lifecycle hooks; raises from dnax_progress at ``stop`` = (task, step)."""

    def __init__(self, stop=None):
        self.stop, self.progress, self.trained = stop, [], []

    @dnax.hookimpl
    def dnax_progress(self, stage, task, completed, total, info):
        self.progress.append((task, completed, total, dict(info)))
        if (task, completed) == self.stop:
            raise KeyboardInterrupt("killed")

    @dnax.hookimpl
    def dnax_block_trained(self, block, epoch, losses, final):
        self.trained.append((block.index, epoch, dict(losses), final))


def make_registry(*extra):
    from dnax.registry import Registry

    return Registry.create(builtins=False, entry_points=False,
                           plugins=[TinyPlugins(), mbconv, distill, *extra])


SPACE = {"plugin": "mbconv", "preset": "custom", "kernels": [3, 5], "expansions": [3],
         "stem_size": 8, "stem_stage": ["ds_r1_k3_s1_e1_c8"], "num_features": 64,
         "blocks": [{"cells": [{"depth": 1}, {"depth": 2}]},
                    {"cells": [{"depth": 2, "width": 32}]},
                    {"cells": [{"depth": 1, "width": 16}]}]}


def pipeline(**trainer):
    return {
        "pipeline": {"name": "t", "seed": 3, "device": "cpu", "resolution": 32,
                     "deterministic": True},
        "data": {"plugin": "tiny-digits"},
        "teacher": {"plugin": "tiny"},
        "space": SPACE,
        "trainer": {"plugin": "distill", "epochs": 2, "batch_size": 16, "steps_per_epoch": 5,
                    "log_every": 1, "checkpoint_every": 2, "lr": [0.01], **trainer},
    }
