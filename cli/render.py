"""rich tables for ``dnax plugins``, ``dnax validate``, ``dnax inspect`` and the run report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.table import Table

import dnax


def _num(v: Any) -> str:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.0f}" if abs(v) >= 1e4 or float(v).is_integer() else f"{v:.4g}"
    return str(v)


def plugins_table(data: Mapping[str, Any]) -> Table:
    t = Table(title="dnax plugins", show_lines=False)
    for col in ("kind", "name", "from", "what it is"):
        t.add_column(col)
    for kind, entries in data["kinds"].items():
        if not entries:
            t.add_row(kind, "[dim]none[/]", "", "")
        for e in entries:
            t.add_row(kind, e["name"], f"{e['distribution']} {e['version']}", e["doc"])
    return t


def plan_table(plan: dnax.Plan) -> Table:
    t = Table(title=f"plan: teacher {plan.teacher}, space {plan.space}, {plan.resolution} px")
    for col in ("block", "stage", "in ch", "out ch", "stride", "size in→out", "cells (depths)",
                "candidates"):
        t.add_column(col, justify="right")
    for b in plan.blocks:
        s = b.spec
        t.add_row(str(s.index), str(s.stage), str(s.in_chs), str(s.out_chs), str(s.stride),
                  f"{s.in_size}→{s.out_size}", ",".join(str(c.depth) for c in b.cells),
                  _num(b.num_candidates))
    t.caption = f"networks in the space: {plan.num_networks:,} ({plan.num_networks:.2e})"
    return t


def ranking_table(ranking: dnax.BlockRanking, key: str, top: int) -> Table:
    scores = {k: np.asarray(v) for k, v in ranking.scores.items()}
    order = np.argsort(scores[key], kind="stable")[:top]
    t = Table(title=f"block {ranking.block}: top {len(order)} of {len(ranking.candidates)} "
                    f"candidates by {key}")
    t.add_column("rank", justify="right")
    t.add_column("cell", justify="right")
    t.add_column("ops")
    for name in scores:
        t.add_column(name, justify="right")
    for name in ranking.costs:
        t.add_column(name, justify="right")
    for r, i in enumerate(order, 1):
        c = ranking.candidates[i]
        ops = " ".join(_short(a) for a in c.arch)
        t.add_row(str(r), str(c.cell), ops, *(f"{scores[n][i]:.4f}" for n in scores),
                  *(_cost(ranking.costs[n], i) for n in ranking.costs))
    return t


def _cost(costs: Any, i: int) -> str:
    """A candidate's cost; where it depends on the width entering the block, its range."""
    a = np.asarray(costs, dtype=np.float64)
    if a.ndim == 1:
        return _num(a[i])
    lo, hi = a[:, i].min(), a[:, i].max()
    return _num(lo) if lo == hi else f"{_num(lo)}..{_num(hi)}"


def _short(arch: str) -> str:
    """'ir_r1_k5_s2_e6_c24_se0.25' → 'k5e6'."""
    parts = {p[0]: p[1:] for p in arch.split("_")[1:] if p and p[0] in "ke"}
    return f"k{parts.get('k', '?')}e{parts.get('e', '?')}" if parts else arch


def selection_table(sel: dnax.Selection) -> Table:
    t = Table(title=f"selected network: score {sel.score:.4f}")
    t.add_column("stage", justify="right")
    t.add_column("layers")
    for i, stage in enumerate(sel.arch_def):
        t.add_row(str(i), "  ".join(stage))
    costs = ", ".join(f"{k} {_num(v)}" + (f" (≤ {_num(sel.budgets[k])})" if k in sel.budgets
                                          else "") for k, v in sel.costs.items())
    t.caption = f"candidates per block: {list(sel.candidates)}; {costs}"
    return t


def top_table(top: Mapping[str, Any], rankings: Sequence[dnax.BlockRanking]) -> Table:
    """The selector's best networks (``selection/top.json``): each block's candidate as ops."""
    limits = ", ".join(f"{m} ≤ {_num(b)}" for m, b in top.get("budgets", {}).items())
    t = Table(title=f"best {len(top['networks'])} networks by {top['key']}"
                    + (f" under {limits}" if limits else ""))
    t.add_column("rank", justify="right")
    for r in rankings:
        t.add_column(f"block {r.block}")
    t.add_column(top["key"], justify="right")
    metrics = list(top["networks"][0]["costs"]) if top["networks"] else []
    for m in metrics:
        t.add_column(m, justify="right")
    for k, net in enumerate(top["networks"], 1):
        blocks = [" ".join(_short(a) for a in r.candidates[i].arch)
                  for r, i in zip(rankings, net["candidates"], strict=True)]
        t.add_row(str(k), *blocks, f"{net['score']:.4f}", *(_num(net["costs"][m]) for m in metrics))
    return t


def report_table(report: Mapping[str, Any]) -> Table:
    t = Table(title=f"dnax report: {report.get('pipeline', '')}")
    t.add_column("")
    t.add_column("teacher", justify="right")
    t.add_column("student", justify="right")
    teacher, student = report.get("teacher", {}), report.get("student", {})
    for key, label in (("top1", "top-1 %"), ("top5", "top-5 %"), ("params", "params"),
                       ("flops", "FLOPs")):
        if key in teacher or key in student:
            t.add_row(label, _num(teacher.get(key, "")), _num(student.get(key, "")))
    for key, label in (("latency_measured_ms", "latency ms, measured"),
                       ("latency_predicted_ms", "latency ms, predicted"),
                       ("latency_budget_ms", "latency ms, budget")):
        if key in student:  # a pipeline with a latency cost model: the final network timed
            t.add_row(label, "", _num(student[key]))
    stages = report.get("stages", {})
    times = [f"{name} " + ("reused" if s.get("skipped") else f"{s['seconds']:.1f} s")
             for name, s in stages.items()]
    total = sum(s["seconds"] for s in stages.values())
    t.caption = "time per stage: " + ", ".join(times) + f" (total {total:.1f} s)" if times else ""
    return t


def stages_table(run: dnax.Run, stages: Sequence[str]) -> Table:
    t = Table(title=f"run {run.run_dir.root}")
    t.add_column("stage")
    t.add_column("status")
    for name in stages:
        t.add_row(name, "[green]finished[/]" if name in run.results else "[dim]not finished[/]")
    return t
