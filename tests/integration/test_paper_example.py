"""docs/examples/imagenet-paper.toml: the paper's setup validates and its teacher's weights load,
against a tiny ImageNet-style folder tree and a tf_efficientnet_b7 weights file made here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from paths import EXAMPLES

import dnax

pytestmark = pytest.mark.slow  # builds and validates the ImageNet-sized paper example

EXAMPLE = EXAMPLES / "imagenet-paper.toml"
CLASSES = ("n01440764", "n01443537")


def write_tree(root: Path) -> None:
    """train/ and val/ class folders of real digit images (sklearn) as PNG files."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    k = 0
    for split, per_class in (("train", 4), ("val", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            picks = np.flatnonzero(digits.target == c)[k:k + per_class]
            for i in picks:
                grey = (digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(grey).resize((40, 40)).convert("RGB").save(folder / f"{i}.png")
        k += 4


def write_weights(path: Path, num_classes: int) -> None:
    """A state dict with every key and shape of timm's tf_efficientnet_b7 (zeros, float16: the
    loader checks keys and shapes only), built from the model on the meta device."""
    import timm
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_b7", pretrained=False,
                                  num_classes=num_classes)
    save_file({k: torch.zeros(v.shape, dtype=torch.float16 if v.is_floating_point() else v.dtype)
               for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A copy of the example whose data root and weights point at files made here."""
    tmp = tmp_path_factory.mktemp("paper")
    write_tree(tmp / "imagenet")
    weights = tmp / "tf_efficientnet_b7.safetensors"
    write_weights(weights, len(CLASSES))
    text = EXAMPLE.read_text()
    for key, value in (("root", f'"{tmp / "imagenet"}"'), ("weights", f'"{weights}"'),
                       ("heldout_size", "2")):  # 10,000 fit ImageNet, not 8 images
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    out = tmp / "imagenet-paper.toml"
    out.write_text(text)
    return out


def test_the_example_names_paths_a_user_must_set():
    with pytest.raises(dnax.ConfigError, match=r"\$\.teacher\.weights"):
        dnax.load_pipeline(EXAMPLE)


def test_paper_example_validates(pipeline):
    from typer.testing import CliRunner

    from dnax.cli.app import app

    result = CliRunner().invoke(app, ["validate", str(pipeline), "--json"])
    assert result.exit_code == 0, result.output
    assert '"valid": true' in result.stdout


def test_paper_example_holds_the_papers_setup(pipeline):
    config = dnax.load_pipeline(pipeline)
    assert config.pipeline.resolution == 224
    sec = config.sections
    teacher, space = sec["teacher"].config, sec["space"].config
    assert (sec["data"].plugin, sec["teacher"].plugin) == ("folder", "efficientnet")
    assert teacher.model == "tf_efficientnet_b7" and space.preset == "paper"
    assert tuple(space.kernels) == (3, 5, 7) and tuple(space.expansions) == (3.0, 6.0)
    trainer = sec["trainer"].config
    assert sec["trainer"].plugin == "distill"
    assert trainer.lr == (0.002, 0.005, 0.005, 0.005, 0.005, 0.002)
    assert (trainer.lr_decay, trainer.epochs, trainer.batch_size) == (0.9, 20, 64)
    assert (trainer.opt, trainer.opt_eps, trainer.weight_decay) == ("adam", 1e-8, 1e-4)
    ev = sec["evaluator"].config
    assert (ev.recalib, ev.normalise) == ("train", "global")
    assert ev.batches * ev.batch_size >= 1024
    retrain = sec["retrainer"].config
    assert (sec["retrainer"].plugin, retrain.recipe, retrain.epochs) == ("timm", "official", 500)
    assert (retrain.warmup_epochs, retrain.label_smoothing, retrain.drop_rate,
            retrain.drop_path_rate, retrain.ema_decay) == (5, 0.1, 0.2, 0.2, 0.9998)
    assert retrain.batch_size * 8 == 1024  # the recipe's lr 0.064 is for 1,024 images

    # the teacher's six searched blocks at 224 px (cell widths are the space's business)
    plan = dnax.plan(pipeline)
    specs = [b.spec for b in plan.blocks]
    assert [s.out_chs for s in specs] == [48, 80, 160, 224, 384, 640]
    assert [s.out_size for s in specs] == [56, 28, 14, 14, 7, 7]
    assert [s.stride for s in specs] == [2, 2, 2, 1, 2, 1]
    assert specs[0].in_chs == 32 and specs[0].in_size == 112
    for block in plan.blocks:
        assert block.cells and all(len(c.ops) == 6 for c in block.cells)


def test_paper_example_loads_its_teacher_and_data(pipeline, tmp_path):
    ctx = dnax.stage_context(pipeline, tmp_path / "run", "teacher")
    data, teacher = ctx.plugins.data, ctx.plugins.teacher
    assert data.num_classes == len(CLASSES)
    model = teacher.load_file(teacher.config.weights, data.num_classes)
    assert sum(p.numel() for p in model.parameters()) > 60e6  # B7: ~64M parameters
    dc = ctx.data_config
    assert dc.input_size == (3, 224, 224)
    for split, n in (("train", 6), ("heldout", 2), ("val", 4)):
        dataset = data.dataset(split, dc)
        assert len(dataset) == n
    image, label = data.dataset("heldout", dc)[0]
    assert image.shape == (3, 224, 224) and label in (0, 1)
