"""The tree walk's floor (node counts against a brute-force enumeration of the prefixes) and the
walk's batching of several scoring batches (scores equal to the plain loop's)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from dnax.plugins.evaluators.tree import (
    MAX_BATCH,
    _preserved,
    batched,
    make_groups,
    plain_cell,
    score_weights,
    tree_nodes,
    walk_cell,
)
from dnax.plugins.measure.bench_rank import bench_supernet, floor_shapes, walk_floor
from dnax.plugins.measure.reports import RANK_MAX_BATCH, rank_report


def brute_force_nodes(shape: tuple[int, ...]) -> Counter:
    """Every prefix of every length is one node: its last op's forward (the empty one: enter;
    each full one also runs exit and the scoring)."""
    nodes: Counter = Counter()
    for k in range(len(shape) + 1):
        for prefix in itertools.product(*(range(n) for n in shape[:k])):
            nodes[(k - 1, prefix[-1]) if prefix else (-1, 0)] += 1
            if k == len(shape):
                nodes[(len(shape), 0)] += 1
    return nodes


@pytest.mark.parametrize("shape", [(3,), (2, 3), (3, 2, 4), (6, 6, 6, 6)])
def test_tree_nodes_are_the_prefixes(shape):
    assert tree_nodes(shape) == dict(brute_force_nodes(shape))


def test_floor_counts_each_shape_as_often_as_the_walk_runs_it():
    torch.manual_seed(0)
    depth, ops = 3, 3
    cell = bench_supernet(depth, ops).eval().cells[0]
    with _preserved(cell), torch.no_grad():
        found = floor_shapes(cell, torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8))
    # by hand: layer 0's ops have shapes of their own (stride 2), layers 1.. share one per op
    brute = brute_force_nodes((ops,) * depth)
    expected = sorted([brute[(-1, 0)], brute[(depth, 0)],
                       *(brute[(0, o)] for o in range(ops)),
                       *(sum(brute[(j, o)] for j in range(1, depth)) for o in range(ops))])
    assert expected == sorted([1, 27, 1, 1, 1, 12, 12, 12])
    assert sorted(count for count, _ in found.values()) == expected


def test_walk_floor_is_a_positive_time():
    torch.manual_seed(0)
    cell = bench_supernet(2, 2).eval().cells[0]
    xs, ts = [torch.randn(2, 32, 8, 8)], [torch.randn(2, 48, 4, 4)]
    out = walk_floor(cell, make_groups(xs, ts, recal="same"), repeats=1)
    assert out["floor_s"] > 0 and out["nodes"] == 1 + 2 + 4 + 4 and out["shapes"] == 6


def test_batched_concatenates_up_to_the_cap():
    xs = [torch.full((3, 1), float(i)) for i in range(4)]
    assert [len(x) for x in batched(xs, None)] == [12]
    assert [len(x) for x in batched(xs, 5)] == [5, 5, 2]
    assert torch.equal(torch.cat(batched(xs, 5)), torch.cat(xs))
    assert batched(xs[:1], 8)[0] is xs[0]


@pytest.mark.parametrize("recal", ["train", "separate", "off", "same"])
@pytest.mark.parametrize("max_batch", [None, 2, 5, MAX_BATCH])
def test_several_scoring_batches_score_as_the_plain_loop(recal, max_batch):
    torch.manual_seed(1)
    net = bench_supernet(2, 3).eval()
    xs = [torch.randn(4, 32, 8, 8) for _ in range(3)]
    ts = [torch.randn(4, 48, 4, 4) for _ in range(3)]
    rec = [torch.randn(4, 32, 8, 8) for _ in range(3 if recal == "separate" else 1)]
    groups = make_groups(xs, ts, recal=recal, recal_inputs=rec)
    w = score_weights(ts)
    tree = walk_cell(net.cells[0], groups, w, max_batch=max_batch)
    torch.testing.assert_close(tree, plain_cell(net, 0, groups, w), rtol=1e-5, atol=0)


def test_bench_rank_reports_the_floor():
    report, rows, caption = rank_report(2, 2, batch_size=2, batches=2, size=8, recal="train",
                                        device="cpu", threads=1)
    assert report["figures"]["floor_s"] > 0
    fl = report["ratios"]["over_floor"]
    assert fl["of"] == ["tree_s", "floor_s"] and fl["goal"] == "<= 1.5x"
    assert fl["value"] == pytest.approx(report["figures"]["tree_s"] / report["figures"]["floor_s"])
    assert report["ratios"]["speedup"]["goal"] == ">= 3x"
    assert "tree / floor" in [r[0] for r in rows] and "floor" in caption
    assert report["details"]["max_rel_diff"] < 1e-5
    assert RANK_MAX_BATCH == MAX_BATCH
