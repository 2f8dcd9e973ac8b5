"""The ``distill`` trainer: every block in one train call, exact resume, divergence, bench."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from tiny import Recorder, TinyTeacher, TinyTeacherConfig, make_registry, pipeline, tiny_model

import dnax
from dnax.plugins.spaces import mbconv
from dnax.plugins.trainers import distill


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads slow tiny
    convolutions down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trains_every_block_in_one_call(tmp_path):
    rec = Recorder()
    run = dnax.run_pipeline(pipeline(epochs=3), tmp_path, registry=make_registry(rec),
                            until="train")
    result = run.results["train"]
    teacher = TinyTeacher(TinyTeacherConfig())
    space = mbconv.MBConvSpace(dnax.load_pipeline(pipeline(), make_registry())
                               .sections["space"].config)
    assert [b.block for b in result.blocks] == [0, 1, 2]
    for ck, spec in zip(result.blocks, teacher.blocks(32), strict=True):
        tensors, meta = run.run_dir.load_tensors(ck.path, kind="supernet",
                                                 expect={"space_hash": space.fingerprint()})
        assert (meta["epoch"], meta["step"]) == ("3", "15")
        space.build_supernet(spec).load_state_dict(tensors)  # strict: every op is stored
        assert ck.steps == 15 and ck.epochs == 3 and math.isfinite(ck.loss)
    # feedback: a progress report per step naming every block, a hook per block and epoch
    assert len(rec.progress) == 15
    assert rec.progress[0][:3] == ("epoch 1/3", 1, 5)
    assert set(rec.progress[0][3]) == {"block0", "block1", "block2"}
    assert [(b, e, f) for b, e, _, f in rec.trained] == [
        (b, e, e == 3) for e in (1, 2, 3) for b in (0, 1, 2)]
    assert set(rec.trained[0][2]) == {"loss", "cell0", "cell1"}
    with open(run.run_dir.path("supernets/losses.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and rows[-1]["step"] == "15"
    assert list(rows[0])[2:] == ["block0.cell0", "block0.cell1", "block1.cell0", "block2.cell0"]
    # the students learn: every cell's loss falls from the first epoch to the last
    firsts = [r for r in rows if r["epoch"] == "1"]
    lasts = [r for r in rows if r["epoch"] == "3"]
    for col in list(rows[0])[2:]:
        first = sum(float(r[col]) for r in firsts) / len(firsts)
        last = sum(float(r[col]) for r in lasts) / len(lasts)
        assert last < first, col


@pytest.mark.parametrize(("kill", "checkpoint", "first"), [
    (3, (1, 2), [("epoch 2/2", 3)]),  # mid-epoch: back to the step-2 checkpoint
    (5, (2, 0), []),  # after the last step: nothing left but writing the results
])
def test_killed_run_resumes_exactly(tmp_path, kill, checkpoint, first):
    whole = dnax.run_pipeline(pipeline(), tmp_path / "a", registry=make_registry(),
                              until="train")
    killer = Recorder(stop=("epoch 2/2", kill))
    with pytest.raises(KeyboardInterrupt):
        dnax.run_pipeline(pipeline(), tmp_path / "b", registry=make_registry(killer),
                          until="train")
    state = dnax.RunDir(tmp_path / "b").load_state(distill.RESUME)
    assert (state["epoch"], state["step"]) == checkpoint  # the last checkpoint before the kill
    rec = Recorder()
    resumed = dnax.run_pipeline(pipeline(), tmp_path / "b", registry=make_registry(rec),
                                until="train")
    assert [p[:2] for p in rec.progress[:1]] == first  # continued where the checkpoint was
    for a, b in zip(whole.results["train"].blocks, resumed.results["train"].blocks, strict=True):
        ta, ma = whole.run_dir.load_tensors(a.path, kind="supernet")
        tb, mb = resumed.run_dir.load_tensors(b.path, kind="supernet")
        assert ma == mb and ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), k
        assert a == b
    assert (whole.run_dir.path("supernets/losses.csv").read_text()
            == resumed.run_dir.path("supernets/losses.csv").read_text())


def test_divergence_names_block_and_step_and_keeps_checkpoint(tmp_path):
    config = pipeline(checkpoint_every=2, log_every=1)
    config["teacher"]["nan_after"] = 3
    with pytest.raises(dnax.DivergenceError, match=r"block0\.cell0: loss is nan at epoch 1 "
                                                   r"step 4"):
        dnax.run_pipeline(config, tmp_path, registry=make_registry(), until="train")
    state = dnax.RunDir(tmp_path).load_state(distill.RESUME)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert all(torch.isfinite(v).all() for sd in state["supernets"] for v in sd.values()
               if v.is_floating_point())


def test_fair_sampling_uses_each_op_once_per_k_steps():
    cells = [[dnax.CellSpec(0, 3, 8, ("a", "b", "c", "d"))]]
    fair = distill.PathSampler(cells, "fair", seed=1)
    for start in (0, 4, 8):
        used = [fair(0, s)[0][0] for s in range(start, start + 4)]
        for layer in range(3):
            assert sorted(u[layer] for u in used) == [0, 1, 2, 3]
    uniform = distill.PathSampler(cells, "uniform", seed=1)
    assert uniform(2, 5) == uniform(2, 5)
    assert len({uniform(0, s)[0][0] for s in range(20)}) > 10


def test_losses_and_learning_rates():
    s, t = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * torch.tensor([1, 10, 100])[:, None,
                                                                                          None]
    assert torch.isclose(distill.feature_loss(s, t, "mse"), ((s - t) ** 2).mean())
    assert torch.isclose(distill.feature_loss(7 * s, 7 * t, "nmse"),
                         distill.feature_loss(s, t, "nmse"))
    assert distill.block_lrs((), 6) == [0.002, 0.005, 0.005, 0.005, 0.005, 0.002]
    assert distill.block_lrs((0.1,), 3) == [0.1] * 3
    with pytest.raises(dnax.ConfigError, match=r"\$\.trainer\.lr: 2 values for 3 blocks"):
        distill.block_lrs((0.1, 0.2), 3)
    with pytest.raises(dnax.ConfigError, match=r"\$\.trainer: opt: timm has no optimizer"):
        dnax.load_pipeline(pipeline(opt="adamx"), make_registry())


def test_data_order_is_seeded_per_epoch_and_sharded():
    a = distill.epoch_batches(50, 8, seed=0, epoch=1)
    assert a == distill.epoch_batches(50, 8, seed=0, epoch=1)
    assert a != distill.epoch_batches(50, 8, seed=0, epoch=2)
    assert len(a) == 6 and all(len(b) == 8 for b in a)
    r0 = distill.epoch_batches(50, 4, seed=0, epoch=1, process_rank=0, world=2)
    r1 = distill.epoch_batches(50, 4, seed=0, epoch=1, process_rank=1, world=2)
    assert [x + y for x, y in zip(r0, r1, strict=True)] == a


def test_bench_train_on_cpu():
    from dnax.plugins.measure.bench_train import bench_train

    teacher = TinyTeacher(TinyTeacherConfig())
    space = mbconv.MBConvSpace(mbconv.MBConvSpaceConfig(
        preset="custom", kernels=(3, 5), expansions=(3.0,), stem_stage=("ds_r1_k3_s1_e1_c8",),
        blocks=tuple(mbconv.BlockConfig((mbconv.CellConfig(d),)) for d in (1, 2, 1))))
    out = bench_train(teacher, tiny_model().eval(), space, resolution=32, batch_size=8,
                      steps=4, warmup=1)
    for key in ("step_ms", "floor_ms", "teacher_ms", "student_ms", "official_ms"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    assert out["step_over_floor"] == pytest.approx(out["step_ms"] / out["floor_ms"])
    assert out["official_over_step"] == pytest.approx(out["official_ms"] / out["step_ms"])
    assert out["blocks"] == 3 and out["cells"] == 3 and out["device"] == "cpu"


def _ddp_worker(rank: int, run_dir: str, port: int) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = pipeline(epochs=1, steps_per_epoch=3)
    config["pipeline"]["deterministic"] = False
    write = distill.Distill._write_blocks

    def spy(self, ctx, step, blocks, *args):  # keep rank 1's own supernets to compare
        write(self, ctx, step, blocks, *args)
        if rank == 1:
            for b, net in zip(blocks, step.supernets, strict=True):
                torch.save(net.state_dict(), f"{run_dir}/rank1.block{b.index}.pt")

    distill.Distill._write_blocks = spy
    dnax.run_pipeline(config, run_dir, registry=make_registry(), until="train")


@pytest.mark.slow
def test_two_processes_train_under_ddp(tmp_path):
    """torchrun-style: two gloo processes, each on its shard; process 0 writes, both end with
    the same weights."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(str(tmp_path), port), nprocs=2)
    # the same steps in one process: without sharding and all-reduce process 0 would equal it
    single = tmp_path / "single"
    config = pipeline(epochs=1, steps_per_epoch=3)
    config["pipeline"]["deterministic"] = False
    dnax.run_pipeline(config, single, registry=make_registry(), until="train")
    rd = dnax.RunDir(tmp_path)
    for i in range(3):
        written, meta = rd.load_tensors(f"supernets/block{i}.safetensors", kind="supernet")
        assert meta["step"] == "3"
        theirs = torch.load(tmp_path / f"rank1.block{i}.pt", weights_only=True)
        alone, _ = dnax.RunDir(single).load_tensors(f"supernets/block{i}.safetensors",
                                                    kind="supernet")
        assert written.keys() == theirs.keys() == alone.keys()
        stats = [k for k in written if "running_" in k]
        params = [k for k in written if "running_" not in k and "num_batches" not in k]
        # all-reduce: the processes' parameters are equal
        assert all(torch.equal(written[k], theirs[k]) for k in params)
        # sharding: BatchNorm statistics follow each process's own images
        assert any(not torch.equal(written[k], theirs[k]) for k in stats)
        # and the result is not what one process gets from its own batches
        assert any(not torch.allclose(written[k], alone[k]) for k in params)


def test_targets_are_the_eval_mode_teachers_block_outputs(tmp_path, monkeypatch):
    """The features a step trains on are the teacher's block outputs in eval mode (BatchNorm
    running statistics), computed here stage by stage from its stored weights."""
    seen = []
    features = distill.DistillStep.features

    def spy(self, images):
        feats = features(self, images)
        seen.append((images.clone(), [f.clone() for f in feats]))
        return feats

    monkeypatch.setattr(distill.DistillStep, "features", spy)
    run = dnax.run_pipeline(pipeline(epochs=1, steps_per_epoch=2), tmp_path,
                            registry=make_registry(), until="train")
    teacher = tiny_model(seed=99)  # other initial weights: the stored ones must replace them
    tensors, _ = run.run_dir.load_tensors(run.results["teacher"].weights, kind="teacher")
    teacher.load_state_dict(tensors)
    teacher.eval()
    assert len(seen) == 2
    for images, feats in seen:
        with torch.no_grad():
            x = teacher.bn1(teacher.conv_stem(images))
            want = []
            for stage in teacher.blocks:  # block i: input after stage i, output after i + 1
                x = stage(x)
                want.append(x)
        assert len(feats) == len(want) == 4
        for got, ref in zip(feats, want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
