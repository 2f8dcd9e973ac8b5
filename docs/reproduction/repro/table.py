"""The ``table`` step: RESULTS.md from the raw files alone (rerunning it gives the same file):
the reading, PROTOCOL.md's endpoints, the ranking, the SPOS baseline, the block level, the
searched student against the teacher and random architectures, every architecture, the
settings, wall times and the machine."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import (
    Raw,
    fmt,
    fmt_ci,
    hms,
    mean_or_nan,
    protocol_section,
    ranking_section,
    repo_path,
    stats,
)
from .common import (
    CELL_DEPTHS,
    LABEL_SMOOTHING,
    LONGER,
    LR,
    MATCHED,
    STEPS,
    TRAIN_IMAGES,
    WARMUP,
    WEIGHT_DECAY,
    Experiment,
    say,
    write_text,
)


def spos_section(raw: Raw, rank: dict[str, Any] | None) -> list[str]:
    s = raw.settings
    if rank is None or not raw.spos:
        return ["SPOS not scored yet.", ""]
    spos = [v for v in rank["spos"] if math.isfinite(v)]
    alone = np.nanmean(rank["truth"], axis=1)
    return [
        f"Sanity of the baseline: SPOS's supernet was trained {s['spos_epochs']} epochs with one "
        "uniform path per step; each architecture's path, with BatchNorm recalibrated on "
        f"{s['recal_batches']} train batches, reaches a mean {s.get('spos_split', 'val')} "
        f"top-1 of {mean_or_nan(spos):.2f} % "
        f"(range {min(spos):.2f}-{max(spos):.2f}), against {mean_or_nan(alone):.2f} % "
        f"(range {alone.min():.2f}-{alone.max():.2f}) for the same architectures trained alone "
        f"for {raw.epochs} epochs (val).",
        "",
    ]


def block_section(raw: Raw) -> tuple[list[str], list[dict[str, Any]]]:
    c = stats()
    out = [
        "Per block, candidates spread evenly over its cells (depths "
        f"{', '.join(map(str, CELL_DEPTHS))}) were each trained alone for "
        f"{raw.settings['block_epochs']} epochs on {raw.settings['block_images']:,} train images' "
        "cached teacher features (MSE; Adam with the distillation trainer's learning rate, "
        "decay and weight decay), "
        "then scored like the supernet (nmae on the same held-out images). τ of the supernet's "
        "score against the stand-alone loss (both lower = better):",
        "",
        "| block | supernets | n | Kendall τ [95 % CI] | Spearman rho [95 % CI] | "
        "within-depth τ | supernet nmae by depth | stand-alone nmae by depth |",
        "|---:|---|---:|---:|---:|---|---|---|",
    ]
    found = []
    epochs = raw.settings["distill_epochs"]
    for b in sorted({int(r["block"]) for r in raw.blocks}):
        rows = [r for r in raw.blocks if int(r["block"]) == b]
        if len(rows) < 3:
            continue
        alone = np.array([float(r["nmae"]) for r in rows])
        depth = np.array([int(r["depth"]) for r in rows])
        for label, scores in ((f"{epochs} epochs", raw.scores),
                              (f"{LONGER * epochs} epochs", raw.longer)):
            if not scores:  # no ``longer`` step at this scale
                continue
            sup = np.array([float(scores[(b, int(r["candidate"]))][raw.search["key"]])
                            for r in rows])
            rep = c.analyse(sup, alone, lower_is_better=True, n_boot=2000, seed=0)
            within = []
            for d in sorted(set(depth)):
                k = depth == d
                if k.sum() >= 3:
                    w = c.analyse(sup[k], alone[k], lower_is_better=True, n_boot=200, seed=0)
                    within.append(f"{d}: {fmt(w['predictors']['dnax']['kendall']['value'], '.2f')}")
            by_sup = {int(d): float(sup[depth == d].mean()) for d in sorted(set(depth))}
            by_alone = {int(d): float(alone[depth == d].mean()) for d in sorted(set(depth))}
            found.append({"block": b, "label": label, "n": len(rows), "rep": rep, "sup": by_sup,
                          "alone": by_alone})
            pk = rep["predictors"]["dnax"]
            out.append(f"| {b} | {label} | {len(rows)} | {fmt_ci(pk['kendall'])} | "
                       f"{fmt_ci(pk['spearman'])} | {'; '.join(within)} | "
                       + ", ".join(f"{d}: {v:.3f}" for d, v in by_sup.items()) + " | "
                       + ", ".join(f"{d}: {v:.3f}" for d, v in by_alone.items()) + " |")
    out.append("")
    for label in dict.fromkeys(f["label"] for f in found):
        group = [f for f in found if f["label"] == label]
        agree = sum(min(f["sup"], key=f["sup"].get) == min(f["alone"], key=f["alone"].get)
                    for f in group)
        out.append(f"- supernets trained {label}: in {agree} of {len(group)} blocks the depth "
                   "with the lowest mean supernet score is also the depth whose candidates, "
                   "trained alone, reach the lowest mean loss")
    if found:
        out += ["- depths (layers per cell) of the searched student: "
                + ", ".join(str(raw.scores[(b, i)]["depth"]) for b, i in
                            enumerate(raw.search["student"]["candidates"])), ""]
    return out, found


def budget_section(raw: Raw) -> tuple[list[str], dict[str, float]]:
    s, st, t = raw.settings, raw.search["student"], raw.search["teacher"]
    seeds = raw.seeds
    fraction = s.get("budget_fraction", 1.0)
    budget = raw.search["budgets"]["params"]
    out = [
        f"Every network below is trained from scratch with the same recipe for "
        f"{raw.epochs} epochs, seeds {', '.join(map(str, seeds))}. The student is "
        f"the lowest summed block `{raw.search['key']}` with params ≤ "
        + (f"the teacher's ({budget:,.0f})" if fraction == 1 else
           f"{fraction:.0%} of the teacher's ({budget:,.0f} of {raw.budget:,})") + "; "
        + ("random architectures are drawn uniformly from the space and kept when under the "
           f"teacher's {raw.budget:,}; " if s["random_archs"] else "")
        + (f"matched architectures likewise, kept when within ±{MATCHED:.0%} of the student's "
           "params; " if s.get("matched_archs") else "")
        + f"the teacher the blocks were distilled from was trained for {s['teacher_epochs']} "
        f"epochs: {t['top1']:.2f} %.",
        "",
        "| network | params | FLOPs (M) | " + " | ".join(f"top-1 seed {k} (%)" for k in seeds)
        + " | mean (%) |",
        "|---|---:|---:|" + "---:|" * (len(seeds) + 1),
    ]
    flops = {r["group"]: int(r["flops"]) for r in raw.runs if r["group"] in ("teacher", "student")}
    means: dict[str, float] = {}

    def row(name: str, params: float, fl: float, acc: Mapping[int, float]) -> float:
        m = mean_or_nan([acc[k] for k in seeds if k in acc])
        out.append(f"| {name} | {params:,.0f} | {fl / 1e6:.2f} | "
                   + " | ".join(fmt(acc.get(k), ".2f") for k in seeds) + f" | {fmt(m, '.2f')} |")
        return m

    if raw.top1("teacher"):
        means["teacher"] = row("teacher", t["params"], flops.get("teacher", math.nan),
                               raw.top1("teacher"))
    means["student"] = row("searched student", st["params"], flops.get("student", math.nan),
                           raw.top1("student"))
    rand = []
    for a in raw.archs:
        if a["group"] in ("random", "matched") and raw.top1(a["group"], a["id"]):
            rand.append(row(f"{a['group']} {a['id']}", a["params"], a["flops"],
                            raw.top1(a["group"], a["id"])))
    means["random"] = mean_or_nan(rand)
    out += ["", f"Mean of the {len(rand)} random architectures: {fmt(means['random'], '.2f')} %. "
            "Student arch def: `" + json.dumps(st["arch_def"]) + "`", ""]
    return out, means


def reading(rank: dict[str, Any] | None, blocks: list[dict[str, Any]],
            means: Mapping[str, float]) -> list[str]:
    """A plain reading, derived from the figures (thresholds from the issue, fixed in advance)."""
    out = []
    end = (rank or {}).get("endpoints")
    if end:
        answer = {"success": "yes", "failure": "no", "inconclusive": "not shown either way"}
        out.append(f"- **Does the search beat choosing by size? {answer[end['verdict']]}** "
                   f"(PROTOCOL.md's rule: {end['verdict']}; {end['why']}"
                   + ("; underpowered: the single-seed noise ceiling is "
                      f"{fmt(end['ceiling'], '.2f')} < 0.6" if not end["ceiling"] >= 0.6
                      else "") + ").")
        if end["matched"]:
            vs = end["matched"]
            out.append(f"- Searched student against {vs['archs']} random architectures of its "
                       f"size (±{MATCHED:.0%} params): {vs['student']:.2f} % against "
                       f"{vs['matched']:.2f} %, difference {fmt_ci(vs)} points.")
    if rank is not None:
        k = rank["predictors"]["dnax"]["kendall"]
        nc = rank["noise_ceiling"]
        out.append(f"- Ranking: DNA's τ is {fmt(k['value'], '.2f')}; the goal was ≥ 0.5 with the "
                   f"interval above 0. " + ("Its interval excludes 0. " if k["ci"][0] > 0 else
                                           "Its interval includes 0. ")
                   + ("The goal is met." if k["value"] >= 0.5 and k["ci"][0] > 0 else
                      "The goal is not met."))
        if nc:
            out.append(f"- Ground truth: two seeds of the same architectures agree with τ = "
                       f"{fmt(nc['kendall'], '.2f')} "
                       + ("(≥ 0.6: the truth is trustworthy at this training length)."
                          if nc["kendall"] >= 0.6 else
                          "(< 0.6: seed noise limits any predictor's τ at this training "
                          "length)."))
        if "difference" in rank:
            d = rank["difference"]
            out.append("- Against SPOS: " + ("DNA ranks better; the paired interval of the "
                                              "difference is above 0." if d["ci"][0] > 0 else
                                              "the paired interval of τ(DNA) - τ(SPOS) includes "
                                              "0: no significant difference."))
        k2 = (rank["longer"] or {}).get("kendall")
        if k2:
            out.append(f"- With the block supernets trained {LONGER}x as long (same teacher, "
                       f"same truth): DNA's τ is {fmt(k2['value'], '.2f')} "
                       f"[{fmt(k2['ci'][0], '.2f')}, {fmt(k2['ci'][1], '.2f')}]"
                       + ("; its interval excludes 0" if k2["ci"][0] > 0 else "")
                       + (f"; against SPOS the paired interval is "
                          f"[{fmt(rank['difference_longer']['ci'][0], '.2f')}, "
                          f"{fmt(rank['difference_longer']['ci'][1], '.2f')}]"
                          if "difference_longer" in rank else "") + ".")
        sizes = ", ".join(f"{k} {fmt(rank['predictors'][k]['kendall']['value'], '.2f')}"
                          for k in ("params", "flops", "depth") if k in rank["predictors"])
        if "endpoints" not in rank:
            out.append(f"- Choosing by size alone: τ of {sizes}. This exploratory study cannot "
                       "say that the search beats choosing by size: see the paired differences "
                       "under the ranking table, and docs/reproduction/PROTOCOL.md for the "
                       "confirmatory test.")
    for label in dict.fromkeys(f["label"] for f in blocks):
        group = [f for f in blocks if f["label"] == label]
        taus = [f["rep"]["predictors"]["dnax"]["kendall"]["value"] for f in group]
        out.append(f"- Block level, supernets trained {label}: τ between the supernet's scores "
                   f"and stand-alone block losses is {', '.join(fmt(v, '.2f') for v in taus)} "
                   f"over blocks {', '.join(str(f['block']) for f in group)}.")
    if means and "teacher" in means:
        out.append(f"- At the teacher's parameter count: student {fmt(means['student'], '.2f')} %, "
                   f"teacher {fmt(means['teacher'], '.2f')} %, random architectures "
                   f"{fmt(means['random'], '.2f')} % (means over seeds).")
    return [*out, ""]


def render(exp: Experiment) -> str:
    """RESULTS.md, from the raw files alone."""
    raw = Raw(exp)
    s = raw.settings
    rank_lines, rank = ranking_section(raw)
    protocol = protocol_section(raw, rank, exp) if s.get("pilot_archs") else []
    block_lines, blocks = block_section(raw)
    budget_lines, means = budget_section(raw)
    lim = s["limit"]
    out = [
        f"# DNA on Fashion-MNIST: results (scale `{s['scale']}`)",
        "",
        f"Generated by `python docs/reproduction/reproduce.py table --scale {s['scale']}` from "
        f"the raw files in `{repo_path(exp.root)}/`; do not edit by hand.",
        "",
        "## Reading",
        "",
        *reading(rank, blocks, means),
        *(["## Pre-registered endpoints (PROTOCOL.md)", "", *protocol] if protocol else []),
        "## Ranking: supernet rating against stand-alone accuracy",
        "",
        *rank_lines,
        "## The SPOS baseline",
        "",
        *spos_section(raw, rank),
        "## Block level: supernet scores against candidates trained alone",
        "",
        *block_lines,
        "## The searched student against random architectures",
        "",
        *budget_lines,
        "## Architectures",
        "",
        "| id | depths | params | FLOPs (M) | DNA rating | "
        + " | ".join(f"seed {k} (%)" for k in raw.seeds) + " | SPOS (%) |",
        "|---:|---|---:|---:|---:|" + "---:|" * (len(raw.seeds) + 1),
    ]
    for a in raw.archs:
        if a["group"] != "sample":
            continue
        acc = raw.top1("sample", a["id"])
        out.append(f"| {a['id']} | {'-'.join(map(str, a['depths']))} | {a['params']:,} | "
                   f"{a['flops'] / 1e6:.2f} | {a['rating']:.4f} | "
                   + " | ".join(fmt(acc.get(k), ".2f") for k in raw.seeds)
                   + f" | {fmt(raw.spos.get(a['id']), '.2f')} |")
    images = ("all images (54,000 train, 6,000 held out, 10,000 val)" if lim is None
              else f"at most {lim:,} images per split (train, held-out, val)")
    out += [
        "",
        "## Settings",
        "",
        f"- Fashion-MNIST at its native {s['resolution']} px, {images}, batch {s['batch_size']}",
        f"- teacher (the blocks' targets): {s['teacher_epochs']} epochs; block supernets: "
        f"{s['distill_epochs']} epochs; ranking: {s['rank_batches']} x "
        f"{s.get('rank_batch', 64)} held-out images",
        f"- every network trained from scratch: {raw.epochs} epochs, AdamW lr {LR}, "
        f"wd {WEIGHT_DECAY}, cosine, {WARMUP} warm-up epoch, label smoothing {LABEL_SMOOTHING}"
        + (f", EMA {s['ema_decay']} (evaluated)" if s.get("ema_decay") else ""),
        f"- SPOS supernet: {s['spos_epochs']} epochs, BatchNorm recalibrated on "
        f"{s['recal_batches']} train batches per path, scored on the "
        f"{s.get('spos_split', 'val')} images",
        f"- seeds: data split and samples {s['seed']}; training seeds "
        f"{', '.join(map(str, raw.seeds))}",
        "",
        "## Wall time",
        "",
        "| step | wall time | sessions | finished (UTC) |",
        "|---|---:|---:|---|",
    ]
    for name in (*STEPS[:-1], "all"):
        if name not in raw.steps:  # a step this scale has not run (cpu: pilot, matched)
            continue
        r = raw.steps[name]
        out.append(f"| {name} | {hms(r.get('seconds', 0.0))} | {r.get('sessions', 0)} | "
                   f"{r.get('finished') or 'unfinished'} |")
    runs = raw.all_runs
    core = sum(float(r["seconds"]) for r in runs)
    out += ["", f"Stand-alone runs: {len(runs)}, {hms(core)} of process time in all "
            "(they run in parallel worker processes, so the steps' wall times overlap)."]
    train = min(lim, TRAIN_IMAGES) if lim else TRAIN_IMAGES
    rates = [train * int(r["epochs"]) / float(r["train_seconds"]) for r in runs
             if float(r["train_seconds"]) > 0]
    wall = raw.steps.get("all", {}).get("seconds", 0.0)
    if rates:
        out.append(f"Training throughput: {float(np.median(rates)):,.0f} images/s per network "
                   f"(median over the runs, {train:,} train images per epoch)"
                   + (f"; {train * sum(int(r['epochs']) for r in runs) / wall:,.0f} images/s in "
                      "all over the whole run's wall time (a lower bound: it includes the "
                      "search)" if wall else "")
                   + ".")
    stages = raw.search.get("stages", {})
    if stages:
        out += ["", "dnax stages within `search`: " + ", ".join(
            f"{k} {hms(v['seconds'])}" for k, v in stages.items() if not v.get("skipped"))]
    m = next((raw.steps[n]["machine"] for n in STEPS[:-1] if n in raw.steps), {})
    out += [
        "",
        "## Machine",
        "",
        f"- {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch threads "
        f"{m.get('torch_threads', '?')}, GPU: {m.get('gpu') or 'none'}",
        f"- Python {m.get('python', '?')}, torch {m.get('torch', '?')}, timm "
        f"{m.get('timm', '?')}, dnax {m.get('dnax', '?')}, {m.get('platform', '?')}",
        "",
    ]
    return "\n".join(out)


def step_table(exp: Experiment, out: Path) -> None:
    write_text(out, render(exp))
    say("table", f"wrote {out}")
