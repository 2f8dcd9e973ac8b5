"""The architectures the truth is measured on (-> archs.json): the ``sample`` step's stratified
sample (every combination of cell depths in a shuffled round, then ops uniformly per layer) and
random architectures under the teacher's parameter count, and the ``matched`` step's random
architectures within MATCHED of the searched student's params. Params and FLOPs are counted on
the network timm builds."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

import dnax
from dnax.plugins.toolkit.training import network_flops, num_params

from .common import CELL_DEPTHS, MATCHED, RESOLUTION, Experiment, read_json, say, write_json
from .search import configured, space_blocks, teacher_params

# --- step: sample -----------------------------------------------------------------------------

def candidate_index(space: dnax.SearchSpace, spec: dnax.BlockSpec) -> dict[tuple, int]:
    """Each candidate's index in the block's ranking, by (cell, ops)."""
    return {(c.cell, tuple(c.ops)): i for i, c in enumerate(space.candidates(spec))}


def stratified_depths(n: int, blocks: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``n`` cell-depth combinations (one cell per block): every combination once in a shuffled
    round, then the next round, so any ``n`` covers the combinations as evenly as it can."""
    combos = list(itertools.product(range(len(CELL_DEPTHS)), repeat=blocks))
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        out += [combos[i] for i in rng.permutation(len(combos))]
    return out[:n]


def network(space: dnax.SearchSpace, blocks: Sequence[dnax.BlockSpec], index: Sequence[dict],
            picks: Sequence[tuple[int, tuple[int, ...]]]) -> dict[str, Any]:
    """One architecture (per block a cell and an op per layer): its candidates, arch def, and
    params and FLOPs counted on the network timm builds."""
    from dnax.plugins.retrainers.export import build_model

    chosen = [space.candidates(b)[idx[p]] for b, idx, p in zip(blocks, index, picks, strict=True)]
    arch_def = space.arch_def(blocks, chosen)
    model = build_model(arch_def, 10, space.model_kwargs())
    return {"candidates": [idx[p] for idx, p in zip(index, picks, strict=True)],
            "cells": [c.cell for c in chosen], "depths": [len(c.ops) for c in chosen],
            "ops": [list(c.ops) for c in chosen], "arch_def": arch_def,
            "params": num_params(model), "flops": network_flops(model, RESOLUTION)}


def step_sample(exp: Experiment, state: dict[str, Any]) -> None:
    _, plugins = configured(exp)
    space, blocks = plugins.space, space_blocks(plugins)
    index = [candidate_index(space, b) for b in blocks]
    n_ops = len(space.cells(blocks[0])[0].ops)
    seed = exp.seed if exp.scale.sample_seed is None else exp.scale.sample_seed
    rng = np.random.default_rng([seed, 16])
    budget = teacher_params()
    archs: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()

    def add(group: str, picks: list[tuple[int, tuple[int, ...]]]) -> bool:
        arch = network(space, blocks, index, picks)
        key = tuple(arch["candidates"])
        if key in seen or (group == "random" and arch["params"] > budget):
            return False
        seen.add(key)
        archs.append({"id": len(archs), "group": group, **arch})
        return True

    # stratified: cell depths first (balanced over the 27 combinations), then ops uniformly
    for depths in stratified_depths(exp.scale.archs, len(blocks), rng):
        while not add("sample", [(d, tuple(int(o) for o in
                                           rng.integers(n_ops, size=CELL_DEPTHS[d])))
                                 for d in depths]):
            pass
    # random under the teacher's parameter count: uniform over the space's networks, rejected
    # above the budget
    while sum(a["group"] == "random" for a in archs) < exp.scale.random_archs:
        picks = []
        for idx in index:
            cell, ops = list(idx)[int(rng.integers(len(idx)))]
            picks.append((cell, ops))
        add("random", picks)
    write_json(exp.files["archs.json"], {"seed": seed, "budget": {"params": budget},
                                         "model_kwargs": space.model_kwargs(), "archs": archs})
    sample = [a for a in archs if a["group"] == "sample"]
    say("sample", f"{len(sample)} stratified architectures, {min(a['params'] for a in sample):,} "
                  f"to {max(a['params'] for a in sample):,} params; "
                  f"{len(archs) - len(sample)} random under {budget:,}")


# --- step: matched (random architectures the student's size) ----------------------------------

def step_matched(exp: Experiment, state: dict[str, Any]) -> None:
    """``matched_archs`` architectures drawn uniformly from the space and kept when their params
    lie within MATCHED of the student's (the ranking's cost tables filter, timm's count
    decides) -> archs.json, group ``matched``."""
    from dnax.plugins.measure.correlate import network_costs

    s = exp.scale
    spec = read_json(exp.files["archs.json"])
    if not s.matched_archs or any(a["group"] == "matched" for a in spec["archs"]):
        return
    _, plugins = configured(exp)
    space, blocks = plugins.space, space_blocks(plugins)
    index = [candidate_index(space, b) for b in blocks]
    student = read_json(exp.files["search.json"])["student"]
    target = float(student["params"])
    run = dnax.load_run(exp.run_dir)
    rankings = run.rankings()
    rng = np.random.default_rng([spec["seed"], 48])
    seen = {tuple(a["candidates"]) for a in spec["archs"]} | {tuple(student["candidates"])}
    found: list[dict[str, Any]] = []
    for _ in range(100):  # rounds of 20,000 uniform draws
        draws = np.stack([rng.integers(len(r.candidates), size=20_000) for r in rankings], 1)
        params = network_costs(rankings, draws, "params", run.fixed_costs["params"])
        for row in draws[np.abs(params - target) <= MATCHED * target]:
            key = tuple(int(i) for i in row)
            if key in seen:
                continue
            seen.add(key)
            cands = [space.candidates(b)[i] for b, i in zip(blocks, key, strict=True)]
            arch = network(space, blocks, index, [(c.cell, tuple(c.ops)) for c in cands])
            if abs(arch["params"] - target) <= MATCHED * target:  # timm's count decides
                found.append(arch)
            if len(found) == s.matched_archs:
                break
        if len(found) == s.matched_archs:
            break
    else:
        raise SystemExit(f"matched: only {len(found)} architectures within "
                         f"{MATCHED:.0%} of the student's {target:,.0f} params in 2,000,000 draws")
    n = len(spec["archs"])
    spec["archs"] += [{"id": n + k, "group": "matched", **a} for k, a in enumerate(found)]
    write_json(exp.files["archs.json"], spec)
    say("matched", f"{len(found)} random architectures of {min(a['params'] for a in found):,} "
                   f"to {max(a['params'] for a in found):,} params (student {target:,.0f})")
