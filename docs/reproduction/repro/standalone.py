"""The truth: every network trained from scratch with one recipe and the scale's seeds
(-> standalone.csv). The runs are a shared list (:func:`tasks`) that any number of processes
work through (:func:`pool`; a claim file per run, a dead process's claims taken over), so
stand-alone training goes on beside the search. With a pilot (smoke, gpu), PROTOCOL.md's rule
first sizes the truth (``pilot`` step -> pilot.json): the sample's first architectures x the
seeds at each E of the ladder until the expected seed-vs-seed τ reaches CEILING_GOAL, then n
from the time left; the list grows as the rule decides."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

import dnax

from .common import (
    CEILING_GOAL,
    TEACHER_ARCH,
    Experiment,
    Scale,
    append_row,
    read_csv,
    read_json,
    say,
    write_json,
)
from .search import configured, context

# --- step: standalone (a pool of training runs, shared by worker processes) -------------------

STANDALONE = ("name", "group", "id", "seed", "top1", "top5", "params", "flops", "epochs",
              "train_seconds", "seconds")


@dataclass(frozen=True)
class Task:
    """One network trained from scratch with one seed."""

    name: str  # folder and row name: archNNN-sK, teacher-sK, student-sK (with a pilot: -eE)
    group: str  # sample, random, matched, teacher, student
    id: int | None  # the architecture's id in archs.json
    seed: int
    epochs: int | None = None  # None: the scale's standalone_epochs


def tasks(exp: Experiment) -> list[Task]:
    """Every stand-alone run, most needed first: half the sample, the networks at the teacher's
    budget (teacher, random, student), the other half (a deadline cuts the end of this list).
    With a pilot: the pilot's runs at the rung's E; once E and n are decided, the student, the
    matched architectures, then the sample's first n; none when the rule has stopped the run."""
    archs = read_json(exp.files["archs.json"])["archs"]
    seeds = exp.truth_seeds
    s = exp.scale
    if s.pilot_archs:
        epochs = pilot_epochs(exp)
        if epochs is None:
            return []
        decision = pilot_state(exp)["decision"]

        def at(group: str, ids: Sequence[int | None]) -> list[Task]:
            name = "student" if group == "student" else "arch{:03d}"
            return [Task(f"{name.format(i)}-s{k}-e{epochs}", group, i, k, epochs)
                    for i in ids for k in seeds]

        sample = [a["id"] for a in archs if a["group"] == "sample"]
        if decision is None:
            return at("sample", sample[:s.pilot_archs])
        matched = [a["id"] for a in archs if a["group"] == "matched"]
        return [*at("sample", sample[:s.pilot_archs]), *at("student", [None]),
                *at("matched", matched), *at("sample", sample[s.pilot_archs:decision["n"]])]

    def of(group: str) -> list[Task]:
        return [Task(f"arch{a['id']:03d}-s{k}", group, a["id"], k)
                for a in archs if a["group"] == group for k in seeds]

    sample = of("sample")
    half = len(sample) // 2 // s.seeds * s.seeds
    fixed = [Task(f"{g}-s{k}", g, None, k) for g in ("teacher", "student") for k in seeds]
    return [*sample[:half], fixed[0], *of("random"), *fixed[1:], *sample[half:]]


def claim(exp: Experiment, task: Task) -> bool:
    """Take ``task`` for this process (a claim file with its pid); a dead owner's claim is
    taken over."""
    path = exp.root / "claims" / task.name
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with suppress(ValueError, OSError):
                pid = int(path.read_text() or 0)
                if pid == os.getpid():
                    return True
                if pid:
                    try:
                        os.kill(pid, 0)
                        return False  # its owner is alive
                    except ProcessLookupError:
                        pass
            with suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def selection_of(exp: Experiment, task: Task, archs: Mapping[int, Any], kwargs: Mapping
                 ) -> dnax.Selection | None:
    """The network a task trains (None: the student, before the search has selected it)."""
    if task.group == "teacher":
        arch_def = [list(a) for a in TEACHER_ARCH]
    elif task.group == "student":
        if not exp.files["search.json"].exists():
            return None
        arch_def = read_json(exp.files["search.json"])["student"]["arch_def"]
    else:
        arch_def = archs[task.id]["arch_def"]
    return dnax.Selection((), 0.0, {}, {}, tuple(tuple(s) for s in arch_def), dict(kwargs))


def train_one(exp: Experiment, task: Task, config: dnax.PipelineConfig, plugins: dnax.Plugins,
              selection: dnax.Selection) -> dict[str, float]:
    """A task's metrics: the search's own retraining for the student's first seed (the same
    recipe and seed), a finished model folder's, or a (resumed) training run."""
    import attrs

    from dnax.plugins.retrainers.export import load_meta
    from dnax.plugins.retrainers.timm_retrainer import TimmRetrainer

    if task.group == "student" and task.seed == exp.seed and not exp.scale.pilot_archs:
        return load_meta(exp.run_dir / "model")["metrics"]
    folder = exp.root / "standalone" / task.name
    if (folder / "model" / "model.json").exists():  # trained, killed before its row
        return load_meta(folder / "model")["metrics"]
    recipe = attrs.evolve(config.section("retrainer").config, onnx=False)
    if task.epochs is not None:
        recipe = attrs.evolve(recipe, epochs=task.epochs)
    ctx = context("standalone", config, plugins, folder, seed=task.seed)
    return TimmRetrainer(recipe).retrain(ctx, selection).metrics


def pool(exp: Experiment, state: dict[str, Any], who: str,
         only: set[str] | None = None) -> None:
    """Train unclaimed tasks until none is left (or the deadline); rows are appended as each
    run finishes, so any number of processes can share the list. ``only``: return once these
    runs are done (the pilot's rung). A worker (``who`` starts with "pool") waits while tasks
    it cannot take yet may still come: the student before the search, the truth runs before
    the pilot's decision."""
    config, plugins = configured(exp)
    parent = os.getppid()
    while True:
        spec = read_json(exp.files["archs.json"])
        archs = {a["id"]: a for a in spec["archs"]}
        todo = tasks(exp)
        rows = read_csv(exp.files["standalone.csv"])
        done = {r["name"] for r in rows}
        pending = [t for t in todo if t.name not in done and (only is None or t.name in only)]
        waiting = who.startswith("pool") and os.getppid() == parent and more_to_come(exp)
        if not pending and not (waiting and only is None):
            return
        took = [float(r["seconds"]) / int(r["epochs"]) for r in rows if r["group"] != "student"]
        need = float(np.median(took)) * (pending[0].epochs or exp.scale.standalone_epochs) \
            if took and pending else 0.0
        if not exp.time_left(need):
            state["cut"] = True
            say(who, f"deadline: {len(done)} of {len(todo)} runs finished")
            return
        task = selection = None
        for t in pending:
            selection = selection_of(exp, t, archs, spec["model_kwargs"])
            if selection is not None and claim(exp, t):
                task = t
                break
        if task is None:
            if not (waiting or only is not None):
                return  # the rest is claimed by live processes
            time.sleep(1.0)  # claimed runs of the rung, or work still to come
            continue
        t0 = time.perf_counter()
        m = train_one(exp, task, config, plugins, selection)
        if task.id is not None and m["params"] != archs[task.id]["params"]:
            raise SystemExit(f"{task.name}: archs.json says {archs[task.id]['params']:,} "
                             f"params, timm built {m['params']:,.0f}")
        append_row(exp.files["standalone.csv"], {
            "name": task.name, "group": task.group, "id": "" if task.id is None else task.id,
            "seed": task.seed, "top1": f"{m['top1']:.4f}", "top5": f"{m['top5']:.4f}",
            "params": int(m["params"]), "flops": int(m["flops"]), "epochs": int(m["epochs"]),
            "train_seconds": f"{m['seconds']:.1f}",
            "seconds": f"{time.perf_counter() - t0:.1f}"}, STANDALONE)
        say(who, f"{task.name} ({task.group}): top-1 {m['top1']:.2f} %, {m['params']:,.0f} "
                 f"params ({time.perf_counter() - t0:.0f} s)")


def more_to_come(exp: Experiment) -> bool:
    """Whether runs may still be added to the task list: the student's before the search; with
    a pilot, the truth runs before its decision and the matched ones before their step."""
    if not exp.scale.pilot_archs:
        return not exp.finished("search")
    decision = pilot_state(exp)["decision"]
    if decision is not None and not decision["go"]:
        return False
    return decision is None or not (exp.finished("search") and exp.finished("matched"))


def step_standalone(exp: Experiment, state: dict[str, Any]) -> None:
    pool(exp, state, "standalone")
    for proc in state.get("workers", ()):
        proc.wait()
    if not state["cut"]:
        done = {r["name"] for r in read_csv(exp.files["standalone.csv"])}
        missing = [t.name for t in tasks(exp) if t.name not in done]
        if missing:  # a worker died or the deadline cut it
            state["cut"] = True
            say("standalone", f"{len(missing)} runs unfinished (first: {missing[0]}); rerun")


# --- step: pilot (PROTOCOL.md's rule: E and n before the truth runs) --------------------------

def pilot_rung(top1: np.ndarray, seconds: Sequence[float], epochs: int) -> dict[str, Any]:
    """One rung of the pilot from its runs' top-1 (architectures x seeds) and wall times:
    the pooled seed SD, the architectures' SD (var(means) - s_seed² / seeds, floored at 0), the
    single-run reliability r1, the expected seed-vs-seed Kendall τ (2/π) arcsin(r1) and the wall
    time per network-epoch."""
    top1 = np.asarray(top1, dtype=np.float64)
    k = top1.shape[1]
    seed_var = float(top1.var(axis=1, ddof=1).mean())
    arch_var = max(float(top1.mean(axis=1).var(ddof=1)) - seed_var / k, 0.0)
    r1 = arch_var / (arch_var + seed_var) if arch_var + seed_var > 0 else 0.0
    expected = 2 / math.pi * math.asin(r1)
    return {"epochs": epochs, "archs": len(top1), "seeds": k, "s_seed": math.sqrt(seed_var),
            "s_arch": math.sqrt(arch_var), "r1": r1, "expected_tau": expected,
            "seconds_per_epoch": float(np.median(seconds)) / epochs,
            "met": expected >= CEILING_GOAL}


def pilot_size(rung: Mapping[str, Any], scale: Scale, workers: int,
               time_left: float | None) -> int | None:
    """PROTOCOL.md's n: the most architectures (at most ``scale.archs``; the pilot's are
    trained) whose truth runs, with the student's and the matched ones', fit ``time_left``
    seconds on ``workers`` processes; None when fewer than ``scale.min_archs`` fit."""
    if time_left is None:
        return scale.archs if scale.archs >= scale.min_archs else None
    per_arch = rung["seconds_per_epoch"] * rung["epochs"] * rung["seeds"]
    fit = scale.pilot_archs + math.floor(workers * max(time_left, 0.0) / per_arch)
    n = min(fit - 1 - scale.matched_archs, scale.archs)  # the student and the matched ones
    return n if n >= scale.min_archs else None


def pilot_state(exp: Experiment) -> dict[str, Any]:
    path = exp.files["pilot.json"]
    return read_json(path) if path.exists() else {"rungs": [], "decision": None}


def pilot_epochs(exp: Experiment) -> int | None:
    """The E the pool trains at now: the decided one, the rung being measured, or None when
    the rule has stopped the run."""
    st = pilot_state(exp)
    if st["decision"] is not None:
        return st["decision"]["epochs"] if st["decision"]["go"] else None
    rungs = len(st["rungs"])
    return exp.scale.epoch_ladder[rungs] if rungs < len(exp.scale.epoch_ladder) else None


def step_pilot(exp: Experiment, state: dict[str, Any]) -> None:
    """Train the pilot's runs (beside the workers), measure each rung, and decide E and n;
    a run whose goal no rung meets, or where n < min_archs fits, stops before the truth runs
    (smoke: the rule is reported and the run goes on at the last rung, to check the rest)."""
    s = exp.scale
    if not s.pilot_archs:
        return
    st = pilot_state(exp)
    while st["decision"] is None:
        epochs = pilot_epochs(exp)
        assert epochs is not None
        pool(exp, state, "pilot", only={t.name for t in tasks(exp) if t.group == "sample"})
        if state["cut"]:
            return
        sample = [a["id"] for a in read_json(exp.files["archs.json"])["archs"]
                  if a["group"] == "sample"][:s.pilot_archs]
        rows = {(int(r["id"]), int(r["seed"])): r for r in read_csv(exp.files["standalone.csv"])
                if r["id"] and int(r["epochs"]) == epochs and int(r["id"]) in sample}
        seeds = exp.truth_seeds
        top1 = [[float(rows[(a, k)]["top1"]) for k in seeds] for a in sample]
        rung = pilot_rung(np.array(top1), [float(r["train_seconds"]) for r in rows.values()],
                          epochs)
        st["rungs"].append(rung)
        say("pilot", f"E = {epochs}: seed SD {rung['s_seed']:.2f}, architectures' SD "
                     f"{rung['s_arch']:.2f}, r1 {rung['r1']:.3f}, expected seed-vs-seed τ "
                     f"{rung['expected_tau']:.2f} (goal {CEILING_GOAL}), "
                     f"{rung['seconds_per_epoch']:.1f} s per network-epoch")
        last = len(st["rungs"]) == len(s.epoch_ladder)
        if rung["met"] or last:
            left = None if exp.deadline is None else exp.deadline - time.time()
            workers = s.workers if exp.workers is None else exp.workers
            n = pilot_size(rung, s, workers, left)
            go = rung["met"] and n is not None
            reason = ("" if go else "no E on the ladder reaches the goal" if not rung["met"]
                      else f"fewer than {s.min_archs} architectures fit the time left")
            st["decision"] = {"go": go or not s.pilot_binding, "met": go, "epochs": epochs,
                              "n": n if n is not None else s.min_archs, "reason": reason,
                              "time_left": left, "workers": workers}
            say("pilot", f"E = {epochs}, n = {st['decision']['n']}" if go else
                f"the rule stops the run: {reason}" + ("" if s.pilot_binding else
                                                       " (smoke: going on regardless)"))
        write_json(exp.files["pilot.json"], st)
    if not st["decision"]["go"]:
        state["cut"] = True
