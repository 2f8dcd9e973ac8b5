"""The prefix evaluator: tree walk == plain loop, sharding, end to end on digits, bench."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import dnax
from dnax.plugins.evaluators.prefix import PrefixConfig, PrefixEvaluator
from dnax.plugins.evaluators.tree import (
    cell_shape,
    make_groups,
    plain_cell,
    score_weights,
    shard_prefixes,
    walk_cell,
)
from dnax.plugins.measure.bench_rank import bench_rank
from dnax.plugins.toolkit.supernet import load_supernet

# --- a small supernet that follows the contract -------------------------------------------------


def timm_layer(in_chs: int, arch: str) -> nn.Module:
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def

    builder = EfficientNetBuilder(act_layer=get_act_layer("swish"), norm_layer=nn.BatchNorm2d,
                                  se_layer=SqueezeExcite)
    return builder(in_chs, decode_arch_def([[arch]]))[0][0]


def adapter(i: int, o: int) -> nn.Module:
    return nn.Identity() if i == o else nn.Sequential(nn.Conv2d(i, o, 1, bias=False),
                                                      nn.BatchNorm2d(o))


class Cell(nn.Module):
    def __init__(self, enter, layers, exit):
        super().__init__()
        self.enter, self.exit = enter, exit
        self.layers = nn.ModuleList(nn.ModuleList(ops) for ops in layers)


class Supernet(nn.Module):
    def __init__(self, cells):
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x, cell, ops):
        c = self.cells[cell]
        x = c.enter(x)
        for layer, o in zip(c.layers, ops, strict=True):
            x = layer[o](x)
        return c.exit(x)


OPS = ((3, 3), (5, 6), (3, 6), (7, 3))


def arch(k: int, e: int, s: int, c: int) -> str:
    return f"ir_r1_k{k}_s{s}_e{e}_c{c}_se0.25"


def make_supernet(t_in: int, t_out: int, stride: int,
                  cells: tuple[tuple[int, int, int, int], ...]) -> Supernet:
    """``cells``: (input width, width, depth, ops) each; adapters where widths differ."""
    out = []
    for in_w, w, depth, n_ops in cells:
        layers = [[timm_layer(in_w if j == 0 else w, arch(k, e, stride if j == 0 else 1, w))
                   for k, e in OPS[:n_ops]] for j in range(depth)]
        out.append(Cell(adapter(t_in, in_w), layers, adapter(w, t_out)))
    return Supernet(out)


def randomise_bn(net: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    # widths are multiples of 8 (timm rounds them); cell 0 has both adapters, cell 1 none
    net = make_supernet(16, 24, 2, ((8, 16, 3, 3), (16, 24, 2, 4))).eval()
    randomise_bn(net)
    xs = [torch.randn(6, 16, 10, 10) for _ in range(2)]
    ts = [torch.randn(6, 24, 5, 5) * 2 + 0.5 for _ in range(2)]
    rec = [torch.randn(6, 16, 10, 10) for _ in range(2)]
    return net, xs, ts, rec


# --- tree walk ------------------------------------------------------------------------------


@pytest.mark.parametrize("recal", ["train", "same", "separate", "off"])
def test_tree_walk_equals_plain_loop(net_and_data, recal):
    net, xs, ts, rec = net_and_data
    groups = make_groups(xs, ts, recal=recal, recal_inputs=rec)
    w = score_weights(ts)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for c, cell in enumerate(net.cells):
        tree = walk_cell(cell, groups, w)
        plain = plain_cell(net, c, groups, w)
        assert tree.shape == (math.prod(cell_shape(cell)), 3)
        assert torch.isfinite(tree).all() and (tree > 0).all()
        torch.testing.assert_close(tree, plain, rtol=1e-5, atol=1e-7)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BN buffers changed"
    assert not net.training


def test_tree_walk_runs_each_shared_prefix_once(net_and_data):
    """Counted forwards prove the prefix sharing: with no recalibration, layer j runs once per
    prefix of length j + 1 (ops_0 x ... x ops_j; the batches as one), where the plain loop runs
    every layer of every candidate and batch (ops_0 x ... x ops_n-1 per layer and batch)."""
    net, xs, ts, _ = net_and_data
    groups = make_groups(xs, ts, recal="off")
    batches = sum(len(g.inputs) for g in groups)
    w = score_weights(ts)
    for c, cell in enumerate(net.cells):
        shape = cell_shape(cell)
        calls = [0] * len(shape)
        hooks = [op.register_forward_hook(lambda *_, j=j, n=calls: n.__setitem__(j, n[j] + 1))
                 for j, layer in enumerate(cell.layers) for op in layer]
        try:
            walk_cell(cell, groups, w)
            tree = list(calls)
            calls[:] = [0] * len(shape)
            plain_cell(net, c, groups, w)
            plain = list(calls)
        finally:
            for h in hooks:
                h.remove()
        assert tree == [math.prod(shape[: j + 1]) for j in range(len(shape))]
        assert plain == [math.prod(shape) * batches] * len(shape)


def test_recalibration_changes_scores(net_and_data):
    net, xs, ts, rec = net_and_data
    w = score_weights(ts)
    cell = net.cells[0]
    off = walk_cell(cell, make_groups(xs, ts, recal="off"), w)
    same = walk_cell(cell, make_groups(xs, ts, recal="same"), w)
    sep = walk_cell(cell, make_groups(xs, ts, recal="separate", recal_inputs=rec), w)
    assert not torch.allclose(off, same, rtol=1e-3)
    assert not torch.allclose(same, sep, rtol=1e-3)


def test_scores_are_the_stated_metrics(net_and_data):
    net, xs, ts, _ = net_and_data
    tree = walk_cell(net.cells[1], make_groups(xs, ts, recal="off"),
                     score_weights(ts, "channel"))
    ops = (2, 3)
    row = 2 * 4 + 3  # product order, first layer most significant
    with torch.no_grad():
        s = torch.cat([net(x, 1, ops) for x in xs]).double()
    t = torch.cat(ts).double()
    var = t.var((0, 2, 3), unbiased=False)
    mse = ((s - t) ** 2).mean()
    nmse = (((s - t) ** 2).mean((0, 2, 3)) / var).mean()
    nmae = (((s - t).abs()).mean((0, 2, 3)) / var.sqrt()).mean()
    got = tree[row].double()
    torch.testing.assert_close(got, torch.stack((mse, nmse, nmae)), rtol=1e-4, atol=0)
    glob = walk_cell(net.cells[1], make_groups(xs, ts, recal="off"),
                     score_weights(ts, "global"))[row].double()
    torch.testing.assert_close(glob[2], (s - t).abs().mean() / t.std(unbiased=False),
                               rtol=1e-4, atol=0)


def test_channel_floor_keeps_a_near_constant_channel_from_dominating():
    torch.manual_seed(0)
    t = torch.randn(16, 8, 6, 6) * torch.linspace(0.5, 2, 8).reshape(1, 8, 1, 1) + 1.0
    t[:, 0] = 3.0 + 1e-5 * torch.randn(16, 6, 6)  # planted: near-constant channel 0
    s = t + 0.1 * torch.randn_like(t)  # the same error in every channel
    w = score_weights([t], "channel")
    gstd = t.double().std(unbiased=False)
    std = t.double().std((0, 2, 3), unbiased=False).clamp_min(0.1 * gstd)
    assert std[0] == pytest.approx(0.1 * float(gstd)) and (std[1:] > 0.1 * gstd).all()
    torch.testing.assert_close(w[2].double() * t.numel(), 1 / std, rtol=1e-5, atol=0)
    torch.testing.assert_close(w[1].double() * t.numel(), 1 / std**2, rtol=1e-5, atol=0)
    # channel 0's share of nmae: at most 10x the global normaliser's weight, not ~1e5x
    assert float(w[2, 0] / w[2, 1:].mean()) < 15
    assert float(w[2, 0]) * t.numel() == pytest.approx(10 / float(gstd), rel=1e-5)
    d = (s - t).double()
    nmae = float((d.abs().mean((0, 2, 3)) / std).mean())
    got = walk_cell(Cell(nn.Identity(), [], nn.Identity()), make_groups([s], [t], recal="off"),
                    w)
    assert float(got[0, 2]) == pytest.approx(nmae, rel=1e-4)
    assert float(got[0, 2]) < 3 * float(d.abs().mean() / gstd)
    gw = score_weights([t])  # the default: one std over the whole tensor
    torch.testing.assert_close(gw[2].double() * t.numel(), (1 / gstd).expand(8), rtol=1e-5,
                               atol=0)


def test_shards_split_every_candidate_once(net_and_data):
    net, xs, ts, _ = net_and_data
    groups, w = make_groups(xs[:1], ts[:1], recal="same"), score_weights(ts[:1])
    shapes = [cell_shape(c) for c in net.cells]
    world = 3
    for depth in (1, 2):
        parts = [shard_prefixes(shapes, r, world, depth) for r in range(world)]
        for c, cell in enumerate(net.cells):
            full = walk_cell(cell, groups, w)
            rows = [walk_cell(cell, groups, w, prefixes=parts[r][c]) for r in range(world)]
            filled = sum((r != 0).all(1).int() for r in rows)
            assert (filled == 1).all()
            torch.testing.assert_close(sum(rows), full, rtol=1e-5, atol=0)
    loads = [sum(math.prod(shapes[c][2:]) * len(p) for c, p in enumerate(parts[r]))
             for r in range(world)]
    assert max(loads) - min(loads) <= max(math.prod(s[2:]) for s in shapes)
    assert shard_prefixes(shapes, 0, 1) == [None, None]


def test_tree_walk_on_the_mbconv_space():
    from dnax.plugins.spaces import mbconv
    cfg = mbconv.MBConvSpaceConfig(
        preset="custom", kernels=(3, 5), expansions=(3.0, 6.0), stem_size=16,
        blocks=(mbconv.BlockConfig((mbconv.CellConfig(3, 16), mbconv.CellConfig(2, 16))),))
    space = mbconv.MBConvSpace(cfg)
    spec = dnax.BlockSpec(0, 1, 24, 40, 2, 12, 6)
    torch.manual_seed(0)
    net = space.build_supernet(spec).eval()
    randomise_bn(net)
    xs, ts = [torch.randn(4, 24, 12, 12)], [torch.randn(4, 40, 6, 6)]
    groups, w = make_groups(xs, ts), score_weights(ts)
    tables = []
    for c, cell in enumerate(net.cells):
        tables.append(walk_cell(cell, groups, w))
        torch.testing.assert_close(tables[-1], plain_cell(net, c, groups, w), rtol=1e-5, atol=0)
    cands = space.candidates(spec)
    assert len(cands) == sum(len(t) for t in tables) == 80
    assert [c.cell for c in cands[62:66]] == [0, 0, 1, 1] and cands[64].ops == (0, 0)


def _dist_worker(rank: int, world: int, init: str, out: str) -> None:
    import traceback
    from datetime import timedelta

    import torch.distributed as tdist

    try:
        tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                 timeout=timedelta(seconds=120))
        torch.manual_seed(0)
        net = make_supernet(16, 24, 2, ((8, 16, 2, 3), (16, 24, 2, 2))).eval()
        xs, ts = [torch.randn(4, 16, 8, 8)], [torch.randn(4, 24, 4, 4)]
        ctx = SimpleNamespace(dist=dnax.DistInfo(rank, world, rank),
                              progress=lambda *a, **k: None)
        spec = dnax.BlockSpec(0, 1, 16, 24, 2, 8, 4)
        table, _ = PrefixEvaluator(PrefixConfig(shard_depth=1, recalib="same"))._score_block(
            ctx, spec, net, xs, ts, [])
        if rank == 0:
            full = torch.cat([walk_cell(c, make_groups(xs, ts), score_weights(ts))
                              for c in net.cells])
            torch.save({"table": torch.from_numpy(table), "full": full}, out)
        tdist.barrier()
        tdist.destroy_process_group()
    except Exception:
        Path(f"{out}.rank{rank}.err").write_text(traceback.format_exc())
        raise


@pytest.mark.slow
def test_sharded_under_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "scores.pt")
    try:
        mp.spawn(_dist_worker, args=(2, init, out), nprocs=2, join=True)
    except mp.ProcessExitedException:
        errors = "\n".join(p.read_text() for p in tmp_path.glob("*.err"))
        pytest.fail(f"a rank failed:\n{errors}")
    got = torch.load(out)
    torch.testing.assert_close(got["table"], got["full"], rtol=1e-5, atol=0)


# --- end to end on digits ---------------------------------------------------------------------

RES = 32
T_ARCH = (arch(3, 3, 2, 16), arch(5, 6, 1, 24))  # the teacher's two searched blocks


class Digits(dnax.DataSource):
    """sklearn digits at 32 px, grey -> 3 channels, normalised; heldout = last 300 images."""

    Config = None

    @property
    def num_classes(self) -> int:
        return 10

    def dataset(self, split, data_config, *, augment=False):
        from sklearn.datasets import load_digits

        d = load_digits()
        sl = slice(0, 1200) if split == "train" else slice(1497, None)
        x = torch.tensor(d.images[sl], dtype=torch.float32)[:, None] / 16
        x = nn.functional.interpolate(x, size=data_config.input_size[1:], mode="bilinear")
        x = (x.expand(-1, 3, -1, -1) - 0.5) / 0.25
        return torch.utils.data.TensorDataset(x.contiguous(), torch.tensor(d.target[sl]))


class Teacher(dnax.Teacher):
    """Stem conv (unsearched) then two timm blocks; random weights, eval mode."""

    Config = None

    def blocks(self, resolution):
        return (dnax.BlockSpec(0, 1, 8, 16, 2, resolution // 2, resolution // 4),
                dnax.BlockSpec(1, 2, 16, 24, 1, resolution // 4, resolution // 4))

    def data_config(self, resolution):
        return dnax.DataConfig((3, resolution, resolution), (0.5,) * 3, (0.25,) * 3)

    def prepare(self, ctx):
        raise NotImplementedError

    def load(self, ctx, result):
        torch.manual_seed(1)
        stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
        return nn.ModuleList([stem, timm_layer(8, T_ARCH[0]), timm_layer(16, T_ARCH[1])]).eval()

    def block_features(self, model, images):
        feats = [model[0](images)]
        for block in model[1:]:
            feats.append(block(feats[-1]))
        return feats


class Space(dnax.SearchSpace):
    """Two cells per block: depth 1 at the teacher's width, depth 2 at width 8."""

    Config = None
    CELLS = ((None, 1, 3), (8, 2, 3))  # (width or teacher's, depth, ops)

    def _cells(self, spec):
        return [(spec.out_chs if w is None else w, d, n) for w, d, n in self.CELLS]

    def cells(self, spec):
        return tuple(dnax.CellSpec(i, d, w, tuple(f"k{k}e{e}" for k, e in OPS[:n]))
                     for i, (w, d, n) in enumerate(self._cells(spec)))

    def candidates(self, spec):
        out = []
        for c, (w, d, n) in enumerate(self._cells(spec)):
            for ops in itertools.product(range(n), repeat=d):
                out.append(dnax.Candidate(spec.index, len(out), c, ops, tuple(
                    arch(*OPS[o], spec.stride if j == 0 else 1, w) for j, o in enumerate(ops))))
        return out

    def build_supernet(self, spec):
        return make_supernet(spec.in_chs, spec.out_chs, spec.stride,
                             tuple((spec.in_chs, w, d, n) for w, d, n in self._cells(spec)))

    def arch_def(self, blocks, chosen):
        return [["ds_r1_k3_s1_c8"], *[list(c.arch) for c in chosen]]

    def fingerprint(self):
        return "test-space"


class Hook:
    def __init__(self):
        self.progress, self.logs, self.ranked = [], [], []

    def dnax_block_ranked(self, block, ranking):
        self.ranked.append((block, ranking))

    def dnax_progress(self, stage, task, completed, total, info):
        self.progress.append((task, completed, total))

    def dnax_log(self, stage, message):
        self.logs.append(message)


def make_ctx(tmp_path: Path, config: PrefixConfig) -> tuple[dnax.StageContext, Hook]:
    """A rank-stage context whose train results are supernets stored in ``tmp_path``; block 0's
    cell 0 op 0 holds the teacher's own block 0 (so candidate 0 must score ~0 without recal)."""
    from dnax.config import PipelineConfig, PipelineSettings

    teacher, space = Teacher(None), Space(None)
    plugins = dnax.Plugins(data=Digits(None), teacher=teacher, space=space,
                           evaluator=PrefixEvaluator(config))
    run_dir = dnax.RunDir(tmp_path)
    blocks = teacher.blocks(RES)
    model = teacher.load(None, None)
    ckpts = []
    for spec in blocks:
        torch.manual_seed(10 + spec.index)
        net = space.build_supernet(spec)
        if spec.index == 0:
            net.cells[0].layers[0][0].load_state_dict(model[1].state_dict())
        rel = f"supernets/block{spec.index}.safetensors"
        run_dir.save_tensors(rel, net.state_dict(), kind="supernet",
                             metadata={"space_hash": space.fingerprint(), "epoch": "1"})
        ckpts.append(dnax.BlockCheckpoint(spec.index, rel, 1, 1, 0.0))
    results = {
        "teacher": dnax.TeacherResult("test", None, 10, blocks, teacher.data_config(RES)),
        "train": dnax.TrainResult(tuple(ckpts)),
    }
    hook = Hook()
    cfg = PipelineConfig(PipelineSettings(resolution=RES, device="cpu"), {})
    return dnax.StageContext("rank", cfg, plugins, run_dir, hook, "cpu",
                             results=results), hook


def test_evaluator_ranks_every_candidate_on_digits(tmp_path):
    ctx, hook = make_ctx(tmp_path, PrefixConfig(batches=2, batch_size=16, recalib="same",
                                                normalise="channel"))
    stored = {p: p.read_bytes() for p in tmp_path.glob("supernets/*")}
    result = ctx.plugins.evaluator.rank(ctx)
    assert result.key == "nmae" and [r.block for r in result.blocks] == [0, 1]
    space = ctx.plugins.space
    for spec, ref in zip(ctx.results["teacher"].blocks, result.blocks, strict=True):
        ranking = ctx.run_dir.load_ranking(ref)
        cands = space.candidates(spec)
        assert ranking.candidates == tuple(cands) and ref.num_candidates == len(cands) == 12
        assert set(ranking.scores) == {"mse", "nmse", "nmae"} and ranking.costs == {}
        for arr in ranking.scores.values():
            assert arr.shape == (12,) and np.isfinite(arr).all() and (arr > 0).all()
        assert len(set(ranking.scores["nmae"].round(6))) == 12
        steps = [done for task, done, total in hook.progress
                 if task == f"rank block {spec.index}" and total == 12]
        assert steps[0] == 0 and steps[-1] == 12 and steps == sorted(steps) and len(steps) > 3
    # the observers got each block's spec and the ranking as stored, once, without a reload
    assert [b for b, _ in hook.ranked] == list(ctx.results["teacher"].blocks)
    for (_, got), ref in zip(hook.ranked, result.blocks, strict=True):
        want = ctx.run_dir.load_ranking(ref)
        assert got.candidates == want.candidates and got.scores.keys() == want.scores.keys()
        for m in want.scores:
            np.testing.assert_array_equal(got.scores[m], want.scores[m])
    assert ctx.ranked == {0, 1}
    assert {p: p.read_bytes() for p in tmp_path.glob("supernets/*")} == stored
    assert not hook.logs

    # stored in space.candidates' order: the plain loop over each cell gives the same numbers
    ev, spec = ctx.plugins.evaluator, ctx.results["teacher"].blocks[1]
    inputs, targets, _ = ev._features(ctx, ctx.results["teacher"], 2)
    net = load_supernet(ctx, "supernets/block1.safetensors", spec)
    groups = make_groups(inputs[1], targets[1], recal="same")
    w = score_weights(targets[1], "channel")
    plain = torch.cat([plain_cell(net, c, groups, w) for c in range(len(net.cells))])
    saved = ctx.run_dir.load_ranking(result.blocks[1]).scores
    np.testing.assert_allclose(np.stack([saved[m] for m in ("mse", "nmse", "nmae")], 1),
                               plain.numpy(), rtol=1e-5)


def test_teacher_block_scores_zero_without_recalibration(tmp_path):
    ctx, _ = make_ctx(tmp_path, PrefixConfig(batches=1, batch_size=32, recalib="off",
                                             normalise="channel"))
    result = ctx.plugins.evaluator.rank(ctx)
    block0 = ctx.run_dir.load_ranking(result.blocks[0])
    assert block0.scores["mse"][0] < 1e-10
    assert int(np.argmin(block0.scores["nmae"])) == 0
    assert np.sort(block0.scores["nmae"])[1] > 0.05


def test_evaluator_refuses_a_foreign_supernet(tmp_path):
    ctx, _ = make_ctx(tmp_path, PrefixConfig(batches=1, batch_size=8))
    ctx.run_dir.save_tensors("supernets/block1.safetensors", {"w": torch.zeros(2)},
                             kind="supernet", metadata={"space_hash": "test-space"})
    with pytest.raises(dnax.ArtifactError, match=r"block1\.safetensors: does not fit"):
        ctx.plugins.evaluator.rank(ctx)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="must be > 0"):
        PrefixConfig(batches=0)


# --- every recalibration mode against a stand-alone oracle ----------------------------------


def _oracle(ctx: dnax.StageContext, tmp_path: Path, *, recalib: str, normalise: str,
            n_score: int, batch_size: int, recalib_batches: int = 1) -> dict[int, np.ndarray]:
    """Per block, (candidates x 3) scores computed without the evaluator: the images chosen by
    the documented rule, each candidate built stand-alone from its supernet's file, BatchNorm
    recalibrated here (cumulative momentum), the metrics by hand."""
    import copy

    from safetensors.torch import load_file

    data, teacher, space = ctx.plugins.data, ctx.plugins.teacher, ctx.plugins.space
    dc = teacher.data_config(RES)
    held, train = data.dataset("heldout", dc), data.dataset("train", dc)

    def perm(n):
        return torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed)).tolist()

    order = perm(len(held))
    score = order[:n_score]
    k = recalib_batches * batch_size
    rec_images = {"separate": [held[i][0] for i in order[n_score:n_score + k]],
                  "train": [train[i][0] for i in perm(len(train))[:k]]}.get(recalib, [])
    x = torch.stack([held[i][0] for i in score])
    model = teacher.load(None, None)
    with torch.no_grad():
        feats = teacher.block_features(model, x)
        rfeats = teacher.block_features(model, torch.stack(rec_images)) if rec_images else None

    def recalibrate(m: nn.Module, batches: list[torch.Tensor]) -> None:
        norms = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
            bn.train()
        with torch.no_grad():
            for xb in batches:
                m(xb)
        for bn in norms:
            bn.eval()

    out = {}
    for spec in ctx.results["teacher"].blocks:
        net = space.build_supernet(spec)
        net.load_state_dict(load_file(tmp_path / f"supernets/block{spec.index}.safetensors"))
        xin, t = feats[spec.index], feats[spec.index + 1].double()
        rows = []
        for cand in space.candidates(spec):
            cell = net.cells[cand.cell]
            path = [cell.enter, *(cell.layers[j][o] for j, o in enumerate(cand.ops)), cell.exit]
            m = copy.deepcopy(nn.Sequential(*path)).eval()
            batches = list(xin.split(batch_size))
            if recalib == "same":  # each scoring batch recalibrates, then is scored
                outs = []
                for xb in batches:
                    recalibrate(m, [xb])
                    with torch.no_grad():
                        outs.append(m(xb))
            else:
                if rfeats is not None:
                    recalibrate(m, list(rfeats[spec.index].split(batch_size)))
                with torch.no_grad():
                    outs = [m(xb) for xb in batches]
            d = torch.cat(outs).double() - t
            gstd = t.std(unbiased=False)
            if normalise == "global":
                nmse, nmae = d.square().mean() / gstd**2, d.abs().mean() / gstd
            else:
                std = t.std((0, 2, 3), unbiased=False).clamp_min(0.1 * gstd)
                nmse = (d.square().mean((0, 2, 3)) / std**2).mean()
                nmae = (d.abs().mean((0, 2, 3)) / std).mean()
            rows.append([float(d.square().mean()), float(nmse), float(nmae)])
        out[spec.index] = np.array(rows)
    return out


def _saved(ctx: dnax.StageContext, result: dnax.RankResult) -> dict[int, np.ndarray]:
    out = {}
    for ref in result.blocks:
        scores = ctx.run_dir.load_ranking(ref).scores
        out[ref.block] = np.stack([scores[m] for m in ("mse", "nmse", "nmae")], 1)
    return out


@pytest.mark.parametrize(("recalib", "normalise"), [
    ("train", "global"), ("same", "global"), ("separate", "channel"), ("off", "global"),
    ("train", "channel")])
def test_every_recalibration_mode_matches_a_standalone_oracle(tmp_path, recalib, normalise):
    config = PrefixConfig(batches=3, batch_size=16, recalib=recalib, recalib_batches=2,
                          normalise=normalise)
    ctx, hook = make_ctx(tmp_path, config)
    got = _saved(ctx, ctx.plugins.evaluator.rank(ctx))
    want = _oracle(ctx, tmp_path, recalib=recalib, normalise=normalise, n_score=48,
                   batch_size=16, recalib_batches=2)
    for b in (0, 1):
        assert got[b].shape == (12, 3)
        np.testing.assert_allclose(got[b], want[b], rtol=2e-4, atol=1e-7)
    assert not hook.logs


def test_recalibration_modes_differ(tmp_path):
    """train, separate and same use different images: their scores differ (the oracle above
    pins which images each one uses)."""
    tables = {}
    for mode in ("train", "same", "separate", "off"):
        ctx, _ = make_ctx(tmp_path / mode, PrefixConfig(batches=2, batch_size=16, recalib=mode))
        tables[mode] = _saved(ctx, ctx.plugins.evaluator.rank(ctx))[1][:, 2]
    for a, b in itertools.combinations(tables, 2):
        assert not np.allclose(tables[a], tables[b], rtol=1e-3), (a, b)


def test_defaults_are_the_official_scoring(tmp_path):
    cfg = PrefixConfig()
    assert (cfg.recalib, cfg.recalib_batches, cfg.normalise) == ("train", 1, "global")
    assert cfg.batches * cfg.batch_size >= 1024 and cfg.batch_size == 64
    # the test data's heldout split has 300 images: 4 whole batches of 64 are scored, one log
    ctx, hook = make_ctx(tmp_path, cfg)
    got = _saved(ctx, ctx.plugins.evaluator.rank(ctx))
    want = _oracle(ctx, tmp_path, recalib="train", normalise="global", n_score=256,
                   batch_size=64)
    for b in (0, 1):
        np.testing.assert_allclose(got[b], want[b], rtol=2e-4, atol=1e-7)
    assert hook.logs == ["$.evaluator: the heldout split has 300 images, fewer than batches x "
                         "batch_size = 1024: every candidate is scored on 256"]


def test_train_recalibration_needs_train_images(tmp_path):
    ctx, _ = make_ctx(tmp_path, PrefixConfig(batches=1, batch_size=8))
    data = ctx.plugins.data
    real = data.dataset
    data.dataset = lambda split, dc, **kw: (torch.utils.data.TensorDataset(
        torch.zeros(0, 3, RES, RES), torch.zeros(0)) if split == "train" else real(split, dc))
    with pytest.raises(dnax.DataError, match=r"\$\.evaluator\.recalib: the train split has no"):
        ctx.plugins.evaluator.rank(ctx)


# --- bench ------------------------------------------------------------------------------------


def test_bench_rank_runs_on_cpu():
    out = bench_rank(depth=3, ops=3, batch_size=4, size=8)
    assert out["candidates"] == 27 and out["tree_s"] > 0 and out["plain_s"] > 0
    assert out["speedup"] == pytest.approx(out["plain_s"] / out["tree_s"])
    assert out["max_rel_diff"] < 1e-5
