"""The analysis behind the table, from the raw files alone: :class:`Raw` joins a results
folder's raw files; the ranking figures (each predictor's Kendall τ and Spearman's rho against
the stand-alone truth, paired differences, seed noise) and PROTOCOL.md's endpoints, verdict and
scatter plots, with the number formats the table uses. The statistics are dnax's
(:mod:`dnax.plugins.measure.correlate`)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import dnax

from .common import CEILING_GOAL, HERE, LONGER, Experiment, read_csv, read_json

# --- statistics and number formats ------------------------------------------------------------

def stats() -> Any:
    """dnax's correlation module (:mod:`dnax.plugins.measure.correlate`)."""
    import importlib

    return importlib.import_module("dnax.plugins.measure.correlate")


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def fmt_ci(stat: Mapping[str, Any], spec: str = ".2f") -> str:
    lo, hi = stat["ci"]
    return f"{fmt(stat['value'], spec)} [{fmt(lo, spec)}, {fmt(hi, spec)}]"


def hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def repo_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(HERE.parent.parent).as_posix()
    except ValueError:
        return path.name


def mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# --- the raw files, joined --------------------------------------------------------------------

class Raw:
    """The raw files of one results folder, joined."""

    def __init__(self, exp: Experiment) -> None:
        for name in Experiment.RAW:
            if not exp.files[name].exists() and name not in Experiment.OPTIONAL:
                raise SystemExit(f"{exp.files[name]}: missing; run the steps before `table`")
        f = exp.files
        self.settings, self.steps = read_json(f["settings.json"]), read_json(f["steps.json"])
        self.search, spec = read_json(f["search.json"]), read_json(f["archs.json"])
        self.archs = spec["archs"]
        self.budget = spec["budget"]["params"]
        self.scores = {(int(r["block"]), int(r["candidate"])): r for r in read_csv(f["scores.csv"])}
        self.longer = {(int(r["block"]), int(r["candidate"])): r
                       for r in read_csv(f["scores-longer.csv"])}  # {} when not made
        self.pilot = read_json(f["pilot.json"]) if f["pilot.json"].exists() else None
        self.blocks = read_csv(f["blocks.csv"])
        self.spos = {int(r["id"]): float(r["top1"]) for r in read_csv(f["spos.csv"])}
        self.all_runs = self.runs = read_csv(f["standalone.csv"])
        decision = (self.pilot or {}).get("decision")
        self.epochs = self.settings["standalone_epochs"]  # every stand-alone run's
        if decision:  # the truth is the runs at the decided E (the pilot's other rungs aside)
            self.epochs = decision["epochs"]
            self.runs = [r for r in self.runs if int(r["epochs"]) == self.epochs]
        self.seeds = sorted({int(r["seed"]) for r in self.runs}) or [self.settings["seed"]]
        for a in self.archs:  # the sample's candidate indices are the ranking's
            for b, (i, cell, ops) in enumerate(zip(a["candidates"], a["cells"], a["ops"],
                                                   strict=True)):
                r = self.scores.get((b, i))
                if r is None or (int(r["cell"]), r["ops"]) != (cell, " ".join(map(str, ops))):
                    raise SystemExit(f"{f['archs.json']}: arch {a['id']} block {b} candidate "
                                     f"{i} is not the one scores.csv lists")
            a["rating"] = self.rating(self.scores, a["candidates"])
            a["rating_longer"] = (self.rating(self.longer, a["candidates"]) if self.longer
                                  else math.nan)

    def rating(self, scores: Mapping[tuple[int, int], Any], candidates: Sequence[int]) -> float:
        """An architecture's DNA rating: the sum of its blocks' scores."""
        return sum(float(scores[(b, i)][self.search["key"]]) for b, i in enumerate(candidates))

    def top1(self, group: str, id: int | None = None) -> dict[int, float]:
        """Stand-alone val top-1 by seed."""
        return {int(r["seed"]): float(r["top1"]) for r in self.runs if r["group"] == group
                and (id is None or r["id"] == str(id))}


# --- ranking: every predictor against the stand-alone truth -----------------------------------

def ranking_section(raw: Raw) -> tuple[list[str], dict[str, Any] | None]:
    c = stats()
    sample = [a for a in raw.archs if a["group"] == "sample" and raw.top1("sample", a["id"])]
    if len(sample) < 3:
        return ["Fewer than 3 architectures trained: no ranking figures yet.", ""], None
    truth = np.array([[raw.top1("sample", a["id"]).get(s, math.nan) for s in raw.seeds]
                      for a in sample])
    spos = [raw.spos.get(a["id"], math.nan) for a in sample]
    have_spos = all(math.isfinite(v) for v in spos)
    n_boot = raw.settings.get("n_boot", 2000)
    rep = c.analyse([a["rating"] for a in sample], truth, params=[a["params"] for a in sample],
                    versus=spos if have_spos else None, versus_name="SPOS",
                    seeds=[str(s) for s in raw.seeds], n_boot=n_boot, seed=0)
    p = rep["predictors"]
    nc = rep["noise_ceiling"]
    out = [
        f"{rep['n']} architectures, stratified (every combination of cell depths over the "
        f"blocks in turn, then ops uniformly), each trained from scratch for "
        f"{raw.epochs} epochs with seeds {', '.join(map(str, raw.seeds))} "
        f"({rep['measurements']} runs). Truth = mean val top-1 over the seeds. Figures are "
        "Kendall's τ-b and Spearman's rho with 95 % bootstrap intervals "
        f"({n_boot:,} resamples of the architectures, paired across predictors).",
        "",
        "| predictor | Kendall τ [95 % CI] | Spearman rho [95 % CI] | top pick's true rank |",
        "|---|---:|---:|---:|",
    ]
    names = {"dnax": "DNA rating (summed block nmae, lower = better)",
             "SPOS": "SPOS path top-1 (one supernet, BN recalibrated)",
             "params": "params (more = better; trivial baseline)"}
    mean = np.nanmean(truth, axis=1)
    longer = None
    if raw.longer:
        longer = c.association([-a["rating_longer"] for a in sample], mean, n_boot=n_boot,
                               seed=0)
        longer.update(c.regret([-a["rating_longer"] for a in sample], mean))
    size = {"flops": [a["flops"] for a in sample],  # trivial baselines beside params
            "depth": [sum(a["depths"]) for a in sample]}
    for k, x in size.items():
        p[k] = {**c.association(x, mean, n_boot=n_boot, seed=0), **c.regret(x, mean)}
    p = {"dnax": p["dnax"], **({"longer": longer} if longer else {}),
         **{k: v for k, v in p.items() if k != "dnax"}}
    names = {"dnax": names["dnax"],
             "longer": f"DNA rating, block supernets trained {LONGER}x as long",
             **{k: v for k, v in names.items() if k != "dnax"},
             "flops": "FLOPs (more = better; trivial baseline)",
             "depth": "depth, total layers (more = better; trivial baseline)"}
    for k, name in names.items():
        if k in p:
            out.append(f"| {name} | {fmt_ci(p[k]['kendall'])} | {fmt_ci(p[k]['spearman'])} | "
                       f"{p[k]['true_rank']} of {rep['n']} |")
    if nc:
        out.append(f"| noise ceiling: seed {raw.seeds[0]} vs seed {raw.seeds[1]} | "
                   f"{fmt(nc['kendall'], '.2f')} [{fmt(nc['ci'][0], '.2f')}, "
                   f"{fmt(nc['ci'][1], '.2f')}] (n = {nc['n']}) | | |")
    out.append("")
    idx = c.resamples(len(sample), n_boot, 0)  # the resamples analyse drew
    if "difference" in rep:
        if longer:
            g2, vs = -np.array([a["rating_longer"] for a in sample]), np.array(spos)
            diff = c.kendall_rows(g2[idx], mean[idx]) - c.kendall_rows(vs[idx], mean[idx])
            rep["difference_longer"] = {
                "kendall": longer["kendall"]["value"] - p["SPOS"]["kendall"]["value"],
                "ci": c.interval(diff, 0.95), "p": float((diff[np.isfinite(diff)] <= 0).mean())}
        for label, d in (("DNA", rep["difference"]),
                         (f"DNA, {LONGER}x longer supernets", rep.get("difference_longer"))):
            if d is None:
                continue
            out.append(f"- τ({label}) - τ(SPOS) = {fmt(d['kendall'], '.2f')}, 95 % CI "
                       f"[{fmt(d['ci'][0], '.2f')}, {fmt(d['ci'][1], '.2f')}]; share of resamples "
                       f"with no advantage over SPOS: {fmt(d['p'], '.3f')} (paired bootstrap)")
    for label, g in (("DNA", -np.array([a["rating"] for a in sample])),
                     (f"DNA, {LONGER}x longer supernets",
                      -np.array([a["rating_longer"] for a in sample]))):
        if not np.isfinite(g).all():
            continue
        for k in ("params", "flops", "depth"):
            x = np.array([a[k] for a in sample]) if k != "depth" else np.array(size["depth"])
            diff = c.kendall_rows(g[idx], mean[idx]) - c.kendall_rows(x[idx], mean[idx])
            d = c.kendall_rows(g[None], mean[None])[0] - c.kendall_rows(x[None], mean[None])[0]
            ci = c.interval(diff, 0.95)
            if label == "DNA":  # PROTOCOL.md's endpoints read these
                rep.setdefault("versus_size", {})[k] = {"value": float(d), "ci": ci}
            out.append(f"- τ({label}) - τ({k}) = {fmt(d, '.2f')}, 95 % CI [{fmt(ci[0], '.2f')}, "
                       f"{fmt(ci[1], '.2f')}] (paired bootstrap)")
    out += noise_lines(truth)
    pk = rep.get("partial_kendall")
    if pk:
        out.append(f"- partial τ of the DNA rating given params: {fmt_ci(pk)}")
        out.append("- τ of the DNA rating within parameter terciles: " + "; ".join(
            f"{t['params'][0]:,.0f}-{t['params'][1]:,.0f} params (n = {t['n']}): "
            f"{fmt(t['kendall']['value'], '.2f')}" for t in rep.get("terciles", [])))
    out.append("")
    return out, {**rep, "sample": sample, "truth": truth, "spos": spos, "longer": longer}


# --- PROTOCOL.md's endpoints and verdict ------------------------------------------------------

def verdict(e1: Mapping[str, Any], e2: Mapping[str, Any]) -> tuple[str, str]:
    """PROTOCOL.md's rule on the primary endpoints 1 (vs FLOPs) and 2 (vs params), each
    ``{"value", "ci"}``: success, failure or inconclusive, and why."""
    named = (("τ(DNA) - τ(FLOPs)", e1), ("τ(DNA) - τ(params)", e2))
    if e1["ci"][0] > 0 and e2["ci"][0] > 0:
        return "success", "both intervals lie above 0"
    below = [n for n, e in named if e["ci"][1] < 0 or e["value"] <= 0]
    if below:
        return "failure", f"{' and '.join(below)}: point estimate <= 0 or interval below 0"
    wide = [f"{n}'s interval" for n, e in named if e["ci"][0] <= 0]
    return "inconclusive", " and ".join(wide) + (" includes 0" if len(wide) == 1 else
                                                 " include 0")


def student_vs_matched(student: Sequence[float], matched: Sequence[Sequence[float]],
                       n_boot: int, seed: int = 0) -> dict[str, Any]:
    """The student's mean top-1 minus the matched architectures' mean (all their runs), with a
    percentile interval from resampling the architectures and, within each, the seeds (and
    the student's seeds)."""
    c = stats()
    st, m = np.asarray(student, dtype=np.float64), np.asarray(matched, dtype=np.float64)
    rng = np.random.default_rng(seed)
    a = rng.integers(len(m), size=(n_boot, len(m)))
    k = rng.integers(m.shape[1], size=(n_boot, len(m), m.shape[1]))
    boot_m = m[a[..., None], k].mean(axis=(1, 2))
    boot_s = st[rng.integers(len(st), size=(n_boot, len(st)))].mean(axis=1)
    return {"value": float(st.mean() - m.mean()), "ci": c.interval(boot_s - boot_m, 0.95),
            "student": float(st.mean()), "matched": float(m.mean()), "archs": len(m)}


def protocol_section(raw: Raw, rank: dict[str, Any] | None, exp: Experiment) -> list[str]:
    """PROTOCOL.md's pilot, endpoints and verdict (scales with a pilot); the scatter PNGs."""
    pilot = raw.pilot or {"rungs": [], "decision": None}
    out = ["The pilot (PROTOCOL.md's rule): the sample's first "
           f"{raw.settings['pilot_archs']} architectures x seeds "
           f"{', '.join(map(str, raw.seeds))}; goal: expected seed-vs-seed τ "
           f"(2/π) arcsin(r1) >= {CEILING_GOAL}.", "",
           "| E | seed SD | architectures' SD | r1 | expected τ | s per network-epoch | met |",
           "|---:|---:|---:|---:|---:|---:|---|"]
    for r in pilot["rungs"]:
        out.append(f"| {r['epochs']} | {r['s_seed']:.2f} | {r['s_arch']:.2f} | {r['r1']:.3f} | "
                   f"{r['expected_tau']:.2f} | {r['seconds_per_epoch']:.1f} | "
                   f"{'yes' if r['met'] else 'no'} |")
    d = pilot["decision"]
    if d is None:
        return [*out, "", "The pilot has not decided yet: no endpoints.", ""]
    left = "no deadline" if d["time_left"] is None else f"{d['time_left']:.0f} s left"
    out += ["", f"Decision: E = {d['epochs']}, n = {d['n']} ({left}, {d['workers']} workers)"
            + ("" if d["met"] else f"; the rule would stop the run: {d['reason']}"
               + ("" if raw.settings["pilot_binding"] else " (smoke: it went on)")), ""]
    if rank is None:
        return [*out, "Fewer than 3 architectures trained: no endpoints.", ""]
    sample, truth = rank["sample"], rank["truth"]
    mean = np.nanmean(truth, axis=1)
    n_boot = raw.settings["n_boot"]
    # the ranking section's paired differences (its resamples are analyse's, the same for
    # every predictor)
    size = rank["versus_size"]
    ends = {"FLOPs": size["flops"], "params": size["params"], "depth": size["depth"]}
    if "difference" in rank:
        ends["SPOS"] = {"value": rank["difference"]["kendall"], "ci": rank["difference"]["ci"]}
    pk = rank["partial_kendall"]
    pairs = (rank["noise_ceiling"] or {}).get("pairs")
    ceiling = float(pairs[0]["kendall"]) if pairs else math.nan  # the first two seeds
    out += [f"Endpoints over n = {len(sample)} architectures, paired bootstrap ({n_boot:,} "
            "resamples of the architectures, the same for every predictor), 95 % percentile "
            "intervals:", "",
            "| endpoint | value [95 % CI] |", "|---|---:|",
            f"| primary 1: τ(DNA) - τ(FLOPs) | {fmt_ci(ends['FLOPs'])} |",
            f"| primary 2: τ(DNA) - τ(params) | {fmt_ci(ends['params'])} |",
            f"| primary 3: partial τ of DNA given params | {fmt_ci(pk)} |"]
    for k in ("SPOS", "depth"):
        if k in ends:
            out.append(f"| secondary: τ(DNA) - τ({k}) | {fmt_ci(ends[k])} |")
    out.append(f"| single-seed noise ceiling: τ(seed {raw.seeds[0]}, seed {raw.seeds[1]}) | "
               f"{fmt(ceiling, '.2f')} |")
    matched = [a for a in raw.archs if a["group"] == "matched"]
    st = raw.top1("student")
    m = [[raw.top1("matched", a["id"]).get(k, math.nan) for k in raw.seeds] for a in matched]
    vs = None
    if matched and st and np.isfinite(m).all():
        vs = student_vs_matched([st[k] for k in sorted(st)], m, n_boot)
        out.append(f"| secondary: student - {vs['archs']} size-matched random architectures "
                   f"(top-1 points) | {fmt_ci(vs)} |")
    word, why = verdict(ends["FLOPs"], ends["params"])
    rank["endpoints"] = {"ends": ends, "verdict": word, "why": why, "ceiling": ceiling,
                         "matched": vs}
    out += ["", f"Verdict by PROTOCOL.md's rule: **{word}** ({why})"
            + ("; **underpowered**: the single-seed ceiling is below 0.6" if not ceiling >= 0.6
               else "") + ".", ""]
    preds = {"DNA rating (minus summed nmae)": -np.array([a["rating"] for a in sample]),
             "FLOPs": np.array([a["flops"] for a in sample], dtype=np.float64),
             "params": np.array([a["params"] for a in sample], dtype=np.float64),
             "SPOS": np.array(rank["spos"], dtype=np.float64),
             "depth": np.array([sum(a["depths"]) for a in sample], dtype=np.float64)}
    out += scatter_pngs(exp, sample, mean, preds)
    return out


def scatter_pngs(exp: Experiment, sample: Sequence[Mapping[str, Any]], truth: np.ndarray,
                 preds: Mapping[str, np.ndarray]) -> list[str]:
    """One scatter per predictor (truth against it) -> scatter-<k>.png; the Markdown links."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for k, (name, x) in enumerate(preds.items()):
        if not np.isfinite(x).all():
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.6))
        ax.scatter(x, truth, s=14)
        ax.set_xlabel(name)
        ax.set_ylabel("stand-alone val top-1 (%, mean of seeds)")
        tau = stats().kendall_rows(x[None], truth[None])[0]
        ax.set_title(f"τ = {tau:.2f}, n = {len(sample)}", fontsize=10)
        fig.tight_layout()
        path = save_png(fig, exp.root / f"scatter-{k}.png")
        lines.append(f"- [{name}]({path.name})")
    return ["Scatter plots:", "", *lines, ""]


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at ``path``, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with dnax.atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def noise_lines(truth: np.ndarray) -> list[str]:
    """How much of the stand-alone accuracy is the architecture and how much the seed: pooled
    seed standard deviation, the spread of the architectures' means, and the reliability of the
    mean of the seeds (Spearman-Brown from Pearson's r between two seeds)."""
    full = truth[np.isfinite(truth).all(axis=1)]
    if full.shape[1] < 2 or len(full) < 3:
        return []
    k = full.shape[1]
    seed_sd = float(np.sqrt(full.var(axis=1, ddof=1).mean()))
    arch_sd = float(full.mean(axis=1).std(ddof=1))
    r1 = float(np.corrcoef(full[:, 0], full[:, 1])[0, 1])
    rel = k * r1 / (1 + (k - 1) * r1)
    return [f"- seed noise: the same architecture's top-1 differs between seeds by a pooled "
            f"standard deviation of {seed_sd:.2f} points; the architectures' mean top-1 spread "
            f"by {arch_sd:.2f} points (standard deviation over {len(full)}). Pearson's r "
            f"between seeds {r1:.2f}, so the mean of {k} seeds has a reliability of {rel:.2f} "
            f"(Spearman-Brown) and no predictor can reach a Pearson r above about "
            f"{math.sqrt(max(rel, 0.0)):.2f} against it"]
