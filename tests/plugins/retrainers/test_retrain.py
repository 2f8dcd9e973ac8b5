"""The ``timm`` retrainer and the model export, on real digits images (sklearn, 32 px)."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
import torch.nn.functional as F

import dnax
from dnax.config import PipelineConfig, PipelineSettings
from dnax.context import Plugins, StageContext
from dnax.plugins.retrainers import timm_retrainer
from dnax.plugins.retrainers.export import export_onnx, load_meta, load_model
from dnax.plugins.retrainers.timm_retrainer import TimmRetrainer, TimmRetrainerConfig, kd_loss

RES = 32
ARCH = (("ds_r1_k3_s1_c8_se0.25",),
        ("ir_r1_k3_s2_e3_c16_se0.25", "ir_r1_k5_s1_e3_c16_se0.25"),
        ("ir_r1_k3_s2_e6_c24_se0.25",))
KWARGS = {"stem_size": 8, "num_features": 64, "act_layer": "swish"}
SELECTION = dnax.Selection((0, 1), 0.5, {"params": 13198.0}, {}, ARCH, KWARGS)


class DigitsSet(torch.utils.data.Dataset):
    """Digits resized to 32 px, 3 channels, normalised; ``augment``: random shifts (torch RNG)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i]
        if self.augment:
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, (dy, dx), dims=(1, 2))
        return x, int(self.y[i])


class Digits(dnax.DataSource):
    """sklearn's digits: 1200 train / 300 heldout / 297 val images."""

    Config = None
    num_classes = 10
    classes = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

    def dataset(self, split, data_config, *, augment=False):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
        y = torch.tensor(d.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        part = {"train": order[:1200], "heldout": order[1200:1500], "val": order[1500:]}[split]
        x = F.interpolate(x[part], size=data_config.input_size[1:], mode="bilinear")
        mean = torch.tensor(data_config.mean)[:, None, None]
        std = torch.tensor(data_config.std)[:, None, None]
        x = (x.expand(-1, 3, -1, -1) - mean) / std
        return DigitsSet(x.contiguous(), y[part], augment)


class Teacher(dnax.Teacher):
    """Only what the retrainer needs: the data config and, for distillation, a model."""

    Config = None
    model: torch.nn.Module | None = None

    def blocks(self, resolution):
        return ()

    def data_config(self, resolution):
        return dnax.DataConfig((3, resolution, resolution), (0.3,) * 3, (0.4,) * 3)

    def prepare(self, ctx):
        raise NotImplementedError

    def load(self, ctx, result):
        return self.model

    def block_features(self, model, images):
        raise NotImplementedError


class Hook:
    """Records progress and log lines; ``stop_at`` raises when that task first reports."""

    def __init__(self, stop_at: str | None = None):
        self.stop_at, self.tasks, self.logs = stop_at, [], []

    def dnax_progress(self, stage, task, completed, total, info):
        if task == self.stop_at:
            raise KeyboardInterrupt(task)
        self.tasks.append((task, completed, total, dict(info)))

    def dnax_log(self, stage, message):
        self.logs.append(message)


def make_ctx(run_dir, hook=None, teacher=None, seed=0) -> StageContext:
    cfg = PipelineConfig(PipelineSettings(seed=seed, resolution=RES, device="cpu"), {})
    results = {}
    if teacher is not None:
        results["teacher"] = dnax.TeacherResult("digits-net", None, 10, (),
                                                Teacher(None).data_config(RES))
    t = Teacher(None)
    t.model = teacher
    return StageContext("retrain", cfg, Plugins(Digits(None), t, None), dnax.RunDir(run_dir),
                        hook or Hook(), "cpu", results=results)


def val_images(n=64) -> torch.Tensor:
    ds = Digits(None).dataset("val", Teacher(None).data_config(RES))
    return torch.stack([ds[i][0] for i in range(n)])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Other processes share the 2 cores: one thread is faster and steadier here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small selected network retrained on digits for 4 epochs (official recipe, EMA)."""
    run_dir = tmp_path_factory.mktemp("retrain")
    hook = Hook()
    retrainer = TimmRetrainer(TimmRetrainerConfig(epochs=4, batch_size=64, onnx=True))
    result = retrainer.retrain(make_ctx(run_dir, hook), SELECTION)
    return run_dir, result, hook


@pytest.mark.slow
def test_retrain_learns_digits_and_exports(trained):
    run_dir, result, hook = trained
    assert result.model == "model/model.safetensors" and result.meta == "model/model.json"
    assert set(result.metrics) == {"top1", "top5", "params", "flops", "epochs", "seconds"}
    assert result.metrics["top1"] > 50  # percent; chance: 10
    assert result.metrics["top5"] >= result.metrics["top1"]
    assert result.metrics["epochs"] == 4
    assert (run_dir / "model/model.onnx").exists()
    assert not (run_dir / "model/resume.pt").exists()
    finals = [t for t in hook.tasks if t[1] == t[2] and "top1" in t[3]]
    assert [t[0] for t in finals] == [f"retrain epoch {e}/4" for e in range(1, 5)]
    meta = load_meta(run_dir / "model")
    assert meta["arch_def"] == [list(s) for s in ARCH] and meta["model_kwargs"] == KWARGS
    assert meta["classes"][3] == "three" and meta["ema"] is True
    assert meta["data_config"]["input_size"] == [3, RES, RES]
    assert meta["metrics"]["top1"] == result.metrics["top1"]
    assert meta["onnx"]["onnxruntime_max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_exported_model_reloads_with_load_model_and_plain_timm(trained):
    run_dir, result, _ = trained
    import safetensors.torch
    import timm.models.efficientnet as E

    # the plain-timm recipe of export.py's docstring
    meta = json.loads((run_dir / "model/model.json").read_text())
    plain = E.EfficientNet(E.decode_arch_def(meta["arch_def"]), num_classes=meta["num_classes"],
                           **meta["model_kwargs"]).eval()
    plain.load_state_dict(safetensors.torch.load_file(run_dir / "model/model.safetensors"))

    x = val_images()
    from_dir, from_json = load_model(run_dir / "model"), load_model(run_dir / "model/model.json")
    assert not from_dir.training
    with torch.no_grad():
        want = plain(x)
        assert torch.equal(from_dir(x), want) and torch.equal(from_json(x), want)
    # the exported (EMA) weights are the ones the reported top-1 was measured on
    ds = Digits(None).dataset("val", Teacher(None).data_config(RES))
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    with torch.no_grad():
        top1 = (from_dir(torch.stack(xs)).argmax(-1) == torch.tensor(ys)).float().mean().item()
    assert 100 * top1 == pytest.approx(result.metrics["top1"], abs=1e-4)
    from timm.data import resolve_model_data_config

    assert resolve_model_data_config(from_dir)["mean"] == (0.3, 0.3, 0.3)


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(trained, tmp_path):
    import onnxruntime as ort
    run_dir, _, _ = trained
    model = load_model(run_dir / "model")
    path = export_onnx(model, tmp_path / "m.onnx", RES)
    x = val_images(5)  # another batch size than the export's: the batch axis is dynamic
    with torch.no_grad():
        want = model(x).numpy()
    for file in (path, run_dir / "model/model.onnx"):
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"images": x.numpy()})[0]
        assert got.shape == (5, 10)
        assert abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path):
    cfg = TimmRetrainerConfig(epochs=3, batch_size=64, warmup_epochs=1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        TimmRetrainer(cfg).retrain(make_ctx(tmp_path / "a"), SELECTION)

        stopped = Hook(stop_at="retrain epoch 2/3")
        with pytest.raises(KeyboardInterrupt):
            TimmRetrainer(cfg).retrain(make_ctx(tmp_path / "b", stopped), SELECTION)
        assert (tmp_path / "b/model/resume.pt").exists()
        assert not (tmp_path / "b/model/model.safetensors").exists()
        torch.manual_seed(123)  # whatever ran in between must not matter
        resumed = Hook()
        result = TimmRetrainer(cfg).retrain(make_ctx(tmp_path / "b", resumed), SELECTION)
    finally:
        torch.use_deterministic_algorithms(deterministic)

    assert "resuming retraining after epoch 1/3" in resumed.logs
    assert {t[0] for t in resumed.tasks} == {"retrain epoch 2/3", "retrain epoch 3/3"}
    assert result.metrics["epochs"] == 3
    a, _ = dnax.load_safetensors(tmp_path / "a/model/model.safetensors", kind="model")
    b, _ = dnax.load_safetensors(tmp_path / "b/model/model.safetensors", kind="model")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist_a = load_meta(tmp_path / "a/model")["history"]
    hist_b = load_meta(tmp_path / "b/model")["history"]
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]


@pytest.mark.slow
def test_resume_state_of_another_recipe_is_not_reused(tmp_path):
    hook = Hook(stop_at="retrain epoch 2/2")
    with pytest.raises(KeyboardInterrupt):
        TimmRetrainer(TimmRetrainerConfig(epochs=2)).retrain(make_ctx(tmp_path, hook), SELECTION)
    other = Hook()
    TimmRetrainer(TimmRetrainerConfig(epochs=2, lr=0.01)).retrain(make_ctx(tmp_path, other),
                                                                  SELECTION)
    assert any("retraining from scratch" in line for line in other.logs)
    assert other.tasks[0][0] == "retrain epoch 1/2"


@pytest.mark.slow
def test_distillation_alone_teaches_the_student(trained, tmp_path):
    run_dir, _, _ = trained
    teacher = load_model(run_dir / "model")
    # distill = 1: the labels play no part; only the teacher's logits train the student
    cfg = TimmRetrainerConfig(epochs=4, distill=1.0, ema_decay=0.0)
    result = TimmRetrainer(cfg).retrain(make_ctx(tmp_path, teacher=teacher), SELECTION)
    assert result.metrics["top1"] > 30  # percent; chance: 10
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, -logits, 2.0).item() > 0


def test_distillation_refuses_a_teacher_of_other_classes(tmp_path):
    ctx = make_ctx(tmp_path, teacher=torch.nn.Identity())
    ctx.results["teacher"] = attrs.evolve(ctx.results["teacher"], num_classes=1000)
    with pytest.raises(dnax.ConfigError, match=r"\$\.retrainer\.distill"):
        TimmRetrainer(TimmRetrainerConfig(epochs=1, distill=0.5)).retrain(ctx, SELECTION)


def test_batch_larger_than_train_split_is_a_data_error(tmp_path):
    with pytest.raises(dnax.DataError, match="batch_size"):
        TimmRetrainer(TimmRetrainerConfig(batch_size=4096)).retrain(make_ctx(tmp_path), SELECTION)


@pytest.mark.slow
def test_load_model_refuses_bad_folders(trained, tmp_path):
    with pytest.raises(dnax.ArtifactError, match="missing"):
        load_model(tmp_path)
    run_dir, _, _ = trained
    meta = json.loads((run_dir / "model/model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(dnax.ArtifactError, match="format version"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**meta, "num_classes": 7}))
    (tmp_path / "model.safetensors").write_bytes((run_dir / "model/model.safetensors")
                                                 .read_bytes())
    with pytest.raises(dnax.ArtifactError, match="does not fit"):
        load_model(tmp_path)


def test_plugin_runs_as_a_pipeline_stage(tmp_path):
    from dnax.registry import Registry
    from standins import PIPELINE, StandinPlugin

    reg = Registry.create(builtins=False, entry_points=False,
                          plugins=[StandinPlugin(), timm_retrainer])
    for key, value in (("distill", 2.0), ("recipe", "fast"), ("ema_decay", 1.0), ("lr", 0.0)):
        bad = {**PIPELINE, "retrainer": {"plugin": "timm", key: value}}
        with pytest.raises(dnax.ConfigError) as e:
            dnax.load_pipeline(bad, reg)
        assert [p.split(":")[0] for p in e.value.problems] == [f"$.retrainer.{key}"]

    good = {**PIPELINE, "retrainer": {"plugin": "timm", "epochs": 1, "batch_size": 32,
                                      "recipe": "quick", "lr": 0.004}}
    run = dnax.run_pipeline(good, tmp_path / "run", registry=reg)
    assert set(run.report["student"]) >= {"top1", "top5", "params", "flops"}
    model = load_model(tmp_path / "run/model")
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_eval_every_measures_val_only_on_those_epochs_and_the_last(tmp_path):
    cfg = TimmRetrainerConfig(epochs=3, batch_size=64, eval_every=2, ema_decay=0)
    result = TimmRetrainer(cfg).retrain(make_ctx(tmp_path), SELECTION)
    history = load_meta(tmp_path / "model")["history"]
    assert [("top1" in h) for h in history] == [False, True, True]
    assert result.metrics["top1"] == history[-1]["top1"]
