"""``dnax bench select``: time the exact selector on synthetic paper-sized tables.

The tables mimic the paper's space: 6 blocks of MBConv cells (kernel {3, 5, 7} x expansion
{3, 6}, SE 0.25) with 288 / 1548 / 1548 / 2808 / 16848 / 6 candidates, about 2x10^17 networks.
Each candidate's params and FLOPs are those of its layers at EfficientNet-B0 widths at 224 px
(FLOPs = 2 per multiply-add), measured once on the layers the network's builder makes; its
score falls with its size plus seeded noise, as real rankings do, which makes the Pareto fronts
realistic (not the tiny fronts of independent random scores).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dnax.plugins.costs.common import head_part, stem_part
from dnax.plugins.selectors.pareto import solve
from dnax.plugins.toolkit.builder import build_layer, build_network
from dnax.plugins.toolkit.training import count_flops

#: per block: layers of each cell, (input width, output width, stride, input size at 224 px)
PAPER_DEPTHS = ((2, 2, 3), (2, 3, 4), (2, 3, 4), (3, 4, 4), (4, 5, 5), (1,))
PAPER_SHAPES = ((16, 24, 2, 112), (24, 40, 2, 56), (40, 80, 2, 28), (80, 112, 1, 14),
                (112, 192, 2, 14), (192, 320, 1, 7))
OPS = tuple(itertools.product((3, 5, 7), (3, 6)))  # (kernel, expansion)
#: the metrics the synthetic tables hold
METRICS = ("params", "flops", "latency")
#: the paper network's fixed stem stage and whole-network arguments (EfficientNet-B0's)
STEM_STAGE = ("ds_r1_k3_s1_e1_c16_se0.25",)
MODEL_KWARGS = {"stem_size": 32, "num_features": 1280, "act_layer": "swish"}


@functools.cache
def _layer(in_chs: int, out_chs: int, k: int, e: int, stride: int, size: int
           ) -> tuple[int, int]:
    """(params, FLOPs) of an MBConv layer as the network's builder makes it, at ``size`` px."""
    arch = f"ir_r1_k{k}_s{stride}_e{e}_c{out_chs}_se0.25"
    layer, _ = build_layer(arch, in_chs, MODEL_KWARGS)
    flops, _ = count_flops(layer.eval(), torch.zeros(1, in_chs, size, size))
    return sum(p.numel() for p in layer.parameters()), flops


@functools.cache
def paper_fixed(num_classes: int = 1000, resolution: int = 224) -> dict[str, float]:
    """Params, FLOPs and synthetic latency of the paper network outside its searched stages
    (stem conv, the fixed depthwise stage, head conv and classifier), measured on the network
    the builder makes."""
    arch = [list(STEM_STAGE), *([f"ir_r1_k3_s{s}_e3_c{cout}_se0.25"]
                                for _, cout, s, _ in PAPER_SHAPES)]
    net = build_network(arch, num_classes, MODEL_KWARGS).eval()
    searched = tuple(f"blocks.{i}." for i in range(1, len(net.blocks)))
    params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith(searched))
    x = torch.zeros(1, 3, resolution, resolution)
    stem, x = count_flops(stem_part(net, 1), x)
    with torch.no_grad():
        x = net.blocks[1:](x)
    head, _ = count_flops(head_part(net), x)
    flops = float(stem + head)
    # the synthetic latency of the stem conv, the fixed stage and the head (3 layers)
    return {"params": float(params), "flops": flops,
            "latency": 1e-8 * flops + 1e-6 * params + 0.05 * 3}


def synthetic_problem(seed: int = 0, depths: Sequence[Sequence[int]] = PAPER_DEPTHS,
                      shapes: Sequence[tuple[int, int, int, int]] = PAPER_SHAPES,
                      ) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Per block: the candidates' scores, and their ``{"params", "flops", "latency"}`` costs.

    ``latency`` (ms) is synthetic: per layer ``1e-8 * FLOPs + 1e-6 * params + 0.05``, times a
    per-candidate log-normal factor (sigma 0.1), so it correlates with params and FLOPs as a
    measured latency does without being a function of them."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng([seed, 1])  # its own stream: scores stay as they were
    scores, costs = [], []
    for cells, (cin, cout, stride, size) in zip(depths, shapes, strict=True):
        first = np.array([_layer(cin, cout, k, e, stride, size) for k, e in OPS], dtype=float)
        out = math.ceil(size / stride)
        inner = np.array([_layer(cout, cout, k, e, 1, out) for k, e in OPS], dtype=float)
        block_s, block_c = [], []
        for depth in cells:
            ops = np.array(list(itertools.product(range(len(OPS)), repeat=depth)))
            c = first[ops[:, 0]] + inner[ops[:, 1:]].sum(axis=1)
            block_c.append(c)
            quality = np.log(c[:, 0])
            z = (quality - quality.mean()) / (quality.std() + 1e-12)
            block_s.append(1.0 - 0.15 * z + rng.normal(0.0, 0.1, len(c)) - 0.05 * depth)
        s, c = np.concatenate(block_s), np.concatenate(block_c)
        scores.append(s * rng.uniform(0.5, 1.5))
        layers = np.concatenate([np.full(len(OPS) ** d, d) for d in cells])
        latency = (1e-8 * c[:, 1] + 1e-6 * c[:, 0] + 0.05 * layers) * noise.lognormal(
            0.0, 0.1, len(c))
        costs.append({"params": c[:, 0], "flops": c[:, 1], "latency": latency})
    return scores, costs


def highs_optimum(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray],
                  budgets: np.ndarray) -> tuple[float, float]:
    """The best summed score within ``budgets`` by scipy's HiGHS MILP (zero gap), and its
    seconds: the reference the exact selector is checked against."""
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [len(s) for s in scores]
    n = sum(sizes)
    scale = np.where(budgets > 0, budgets, 1.0)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    one = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(sizes), n))
    t0 = time.perf_counter()
    res = milp(np.concatenate(scores), integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=[LinearConstraint((np.concatenate(costs) / scale).T, -np.inf,
                                             budgets / scale), LinearConstraint(one, 1, 1)],
               options={"mip_rel_gap": 0.0})
    seconds = time.perf_counter() - t0
    return (float(res.fun) if res.status == 0 else float("nan")), seconds


def bench_select(metrics: Sequence[str] = ("params",), *, seeds: Sequence[int] = (0,),
                 tightness: Sequence[float] = (0.5,), repeats: int = 5, top_k: int = 5,
                 check: bool = False, time_limit: float = 60.0,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time :func:`solve` on a seeded family of synthetic paper-sized problems (every seed at
    every tightness): the median of ``repeats`` solves each, then the family's median and max.

    Each metric gets the budget ``cheapest + tightness * (dearest - cheapest)`` (whole network,
    fixed parts included), e.g. about 5.1 M params for ``tightness=0.5``. With ``check``, every
    best score is compared with HiGHS's (:func:`highs_optimum`).
    """
    fixed = np.array([paper_fixed()[m] for m in metrics], dtype=float)
    runs = []
    for seed in seeds:
        scores, costs = synthetic_problem(seed)
        table = [np.stack([c[m] for m in metrics], axis=1) for c in costs]
        lo = sum(t.min(axis=0) for t in table) if metrics else np.zeros(0)
        hi = sum(t.max(axis=0) for t in table) if metrics else np.zeros(0)
        for tight in tightness:
            if progress is not None:
                progress(f"seed {seed}, tightness {tight:g}")
            budgets = lo + tight * (hi - lo)
            times = []
            sol = None
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                sol = solve(scores, table, budgets, top_k=top_k, names=list(metrics),
                            fixed=fixed, time_limit=time_limit)
                times.append(time.perf_counter() - t0)
            assert sol is not None
            best = sol.top[0]
            run: dict[str, Any] = {
                "seed": seed, "tightness": tight, "seconds": float(np.median(times)),
                "times": [round(t, 6) for t in times], "score": best.score,
                "optimal": sol.optimal, "gap": sol.gap, "method": sol.method,
                "budgets": {m: float(b + f) for m, b, f in zip(metrics, budgets, fixed,
                                                              strict=True)},
                "costs": {m: c + f for m, c, f in zip(metrics, best.costs, fixed, strict=True)},
                "front": len(sol.front_scores), "kept": list(sol.kept),
                "largest_merge": sol.largest,
            }
            if check:
                ref, ref_s = highs_optimum(scores, table, budgets)
                run |= {"highs_score": ref, "highs_seconds": ref_s,
                        "matches_highs": bool(abs(best.score - ref) <= 1e-9 * max(1.0,
                                                                                 abs(ref)))}
            runs.append(run)
    seconds = [r["seconds"] for r in runs]
    first = synthetic_problem(seeds[0])[0]
    return {
        "seconds": float(np.median(seconds)), "max_seconds": float(max(seconds)),
        "instances": len(runs), "all_optimal": all(r["optimal"] for r in runs),
        "all_match_highs": all(r["matches_highs"] for r in runs) if check else None,
        "candidates": [len(s) for s in first],
        "networks": float(math.prod(len(s) for s in first)),
        "top_k": top_k, "runs": runs,
        # one instance: its figures at the top level too
        **({k: runs[0][k] for k in ("score", "budgets", "costs", "front", "kept",
                                     "largest_merge", "seed")} if len(runs) == 1 else {}),
    }
