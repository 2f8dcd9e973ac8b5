"""A teacher: a tiny timm EfficientNet trained here; its stages 1 and 2 are the blocks."""

import itertools

import torch
import torch.nn.functional as F
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.builder import build_network

ARCH = [["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e2_c16"], ["ir_r1_k3_s2_e2_c24"]]
WEIGHTS = "teacher/tiny.safetensors"


@frozen
class TinyConfig:
    epochs: int = field(default=3, validator=dnax.positive, metadata={"help": "training epochs"})


class TinyTeacher(dnax.Teacher):
    """timm's EfficientNet of ARCH, trained from scratch with Adam."""

    Config = TinyConfig

    def net(self, num_classes):
        return build_network(ARCH, num_classes, {"stem_size": 8, "num_features": 64})

    def blocks(self, resolution):
        feats = self.block_features(self.net(1).eval(), torch.zeros(1, 3, resolution, resolution))
        return tuple(dnax.BlockSpec(i, i + 1, a.shape[1], b.shape[1], a.shape[-1] // b.shape[-1],
                                    a.shape[-1], b.shape[-1])
                     for i, (a, b) in enumerate(itertools.pairwise(feats)))

    def data_config(self, resolution):
        return dnax.DataConfig((3, resolution, resolution), (0.5,) * 3, (0.5,) * 3)

    def prepare(self, ctx):
        torch.manual_seed(ctx.seed)
        model = self.net(ctx.plugins.data.num_classes).to(ctx.device).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for epoch in range(self.config.epochs):
            for images, labels in ctx.loader("train", 16, shuffle=True):
                loss = F.cross_entropy(model(images.to(ctx.device)), labels.to(ctx.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
            ctx.progress("teacher", epoch + 1, self.config.epochs, loss=loss.item())
        ctx.run_dir.save_tensors(WEIGHTS, model.state_dict(), kind="teacher")
        return dnax.TeacherResult("tiny", WEIGHTS, ctx.plugins.data.num_classes,
                                  self.blocks(ctx.resolution), self.data_config(ctx.resolution))

    def load(self, ctx, result):
        model = self.net(result.num_classes)
        model.load_state_dict(ctx.run_dir.load_tensors(result.weights, kind="teacher")[0])
        return model.to(ctx.device).eval()

    @torch.no_grad()
    def block_features(self, model, images):
        feats = [model.blocks[0](model.bn1(model.conv_stem(images)))]  # the input of block 0
        for stage in model.blocks[1:]:
            feats.append(stage(feats[-1]))
        return feats


@dnax.hookimpl
def dnax_register_teachers(register):
    register("tiny", TinyTeacher)
