"""The dnax side of the study: the search pipeline (teacher, block supernets, ranking, selection,
retraining), its plugins and stage contexts for the steps that call plugins directly, and the
steps that run the pipeline: ``search`` (-> search.json, scores.csv) and ``longer`` (the block
supernets trained LONGER x as long from the same teacher -> scores-longer.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dnax
from dnax.plugins.toolkit.training import num_params

from .common import (
    CELL_DEPTHS,
    EXPANSIONS,
    KERNELS,
    LABEL_SMOOTHING,
    LONGER,
    LR,
    NUM_FEATURES,
    RESOLUTION,
    STEM_SIZE,
    TEACHER_ARCH,
    WARMUP,
    WEIGHT_DECAY,
    Experiment,
    say,
    write_csv,
    write_json,
    write_text,
)

# --- dnax plumbing ----------------------------------------------------------------------------

class Echo:
    """Prints the pipeline's log lines and stage ends (plugins never print; observers do)."""

    def __init__(self, step: str) -> None:
        self.step = step

    @dnax.hookimpl
    def dnax_log(self, stage: str, message: str) -> None:
        say(self.step, f"{stage}: {message}")

    @dnax.hookimpl
    def dnax_stage_end(self, stage: str, run_dir: Path, result: Any, skipped: bool,
                       seconds: float) -> None:
        say(self.step, f"stage {stage} {'reused' if skipped else 'done'} ({seconds:.1f} s)")


def registry(step: str) -> Any:
    from dnax.registry import Registry

    return Registry.create(entry_points=False, plugins=[Echo(step)])


def configured(exp: Experiment) -> tuple[dnax.PipelineConfig, dnax.Plugins]:
    """The pipeline config and its plugins (the pipeline file is written first if missing)."""
    import tomli_w

    if not exp.pipeline_toml.exists():
        write_text(exp.pipeline_toml, tomli_w.dumps(pipeline(exp)))
    reg = registry("load")
    config = dnax.load_pipeline(exp.pipeline_toml, reg)
    return config, dnax.build_plugins(config, reg)


def context(stage: str, config: dnax.PipelineConfig, plugins: dnax.Plugins, folder: Path,
            seed: int | None = None) -> dnax.StageContext:
    """A stage context outside the runner on ``folder``: the pipeline's data and device, the
    plugins given (built once); ``seed`` replaces the pipeline seed (initial weights, data
    order), never the data split's. Progress and log lines are dropped (no hook): these steps
    print one line per network instead. A ``folder`` that is a dnax run (the search's) has its
    finished stages' results loaded into ``ctx.results``; the steps read nothing from them."""
    import attrs

    if seed is not None:
        config = attrs.evolve(config, pipeline=attrs.evolve(config.pipeline, seed=seed))
    return dnax.stage_context(config, folder, stage, registry=registry(stage), plugins=plugins)


def teacher_params() -> int:
    from dnax.plugins.teachers.efficientnet import EfficientNetConfig, EfficientNetTeacher

    cfg = EfficientNetConfig(arch_def=TEACHER_ARCH, stem_size=STEM_SIZE,
                             num_features=NUM_FEATURES)
    return num_params(EfficientNetTeacher(cfg).build_model(10))


def retrain_recipe(exp: Experiment) -> dict[str, Any]:
    """The one from-scratch recipe (AdamW, cosine, warm-up, label smoothing; no EMA, dropout or
    drop-path): networks differ only in their architecture."""
    return {"plugin": "timm", "recipe": "quick", "epochs": exp.scale.standalone_epochs,
            "batch_size": exp.scale.batch_size, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "warmup_epochs": WARMUP, "label_smoothing": LABEL_SMOOTHING, "drop_rate": 0.0,
            "drop_path_rate": 0.0, "ema_decay": exp.scale.ema_decay}


def pipeline(exp: Experiment) -> dict[str, Any]:
    """The dnax pipeline of the search: teacher, space, distill, prefix, costs, exact, timm."""
    s = exp.scale
    data: dict[str, Any] = {"plugin": "fashion_mnist", "seed": exp.seed}
    if s.limit is not None:
        data["limit"] = s.limit
    teacher = {k: v for k, v in retrain_recipe(exp).items()
               if k in ("batch_size", "lr", "weight_decay", "label_smoothing")}
    return {
        "pipeline": {"name": f"fashion-mnist-{exp.scale_name}", "resolution": RESOLUTION,
                     "seed": exp.seed, "device": exp.device, "threads": exp.threads},
        "data": data,
        "teacher": {"plugin": "efficientnet", "arch_def": [list(a) for a in TEACHER_ARCH],
                    "stem_size": STEM_SIZE, "num_features": NUM_FEATURES,
                    "epochs": s.teacher_epochs, "opt": "adamw", "sched": "cosine",
                    "warmup_epochs": WARMUP, **teacher},
        "space": {"plugin": "mbconv", "preset": "custom", "kernels": list(KERNELS),
                  "expansions": list(EXPANSIONS), "stem_size": STEM_SIZE,
                  "stem_stage": list(TEACHER_ARCH[0]), "num_features": NUM_FEATURES,
                  "blocks": [{"cells": [{"depth": d} for d in CELL_DEPTHS]}
                             for _ in TEACHER_ARCH[1:]]},
        "trainer": {"plugin": "distill", "epochs": s.distill_epochs,
                    "batch_size": s.batch_size},
        "evaluator": {"plugin": "prefix", "batches": s.rank_batches,
                      "batch_size": s.rank_batch},
        "costs": [{"plugin": "params"}, {"plugin": "flops"}],
        "selector": {"plugin": "exact", "key": "nmae",
                     "budgets": {"params": int(s.budget_fraction * teacher_params())}},
        "retrainer": retrain_recipe(exp),
    }


def space_blocks(plugins: dnax.Plugins) -> tuple[dnax.BlockSpec, ...]:
    """The searched blocks, from the teacher's architecture alone (no training needed)."""
    return plugins.teacher.blocks(RESOLUTION)


# --- step: search -----------------------------------------------------------------------------

SCORES = ("block", "candidate", "cell", "depth", "ops", "nmae", "nmse", "mse")


def write_scores(run: dnax.Run, path: Path) -> None:
    """Every candidate's scores, one row each."""
    rows = []
    for r in run.rankings():
        for i, c in enumerate(r.candidates):
            rows.append({"block": r.block, "candidate": i, "cell": c.cell, "depth": len(c.ops),
                         "ops": " ".join(map(str, c.ops)),
                         **{m: f"{float(r.scores[m][i]):.6g}" for m in SCORES[5:]}})
    write_csv(path, rows, SCORES)


def step_search(exp: Experiment, state: dict[str, Any]) -> None:
    configured(exp)  # writes pipeline.toml
    say("search", f"teacher: {teacher_params():,} params; pipeline {exp.pipeline_toml}")
    until = "select" if exp.scale.pilot_archs else None  # the pool trains the student
    run = dnax.run_pipeline(exp.pipeline_toml, exp.run_dir, registry=registry("search"),
                            until=until)
    t, sel = run.results["teacher"], run.selection
    student = (run.results["retrain"].metrics if until is None else
               {"top1": None, "params": sel.costs["params"], "flops": sel.costs["flops"]})
    write_scores(run, exp.files["scores.csv"])
    write_json(exp.files["search.json"], {
        "teacher": {"top1": t.metrics["top1"], "params": t.metrics["params"],
                    "epochs": t.metrics.get("epochs"), "arch_def": TEACHER_ARCH},
        "student": {"top1": student["top1"], "params": student["params"],
                    "flops": student["flops"], "arch_def": sel.arch_def,
                    "candidates": list(sel.candidates), "rating": sel.score,
                    "predicted_costs": sel.costs, "cells": [], "model_kwargs": sel.model_kwargs},
        "budgets": sel.budgets,
        "key": run.results["rank"].key,
        "blocks": [{"index": b.index, "in_chs": b.in_chs, "out_chs": b.out_chs,
                    "stride": b.stride, "in_size": b.in_size, "out_size": b.out_size,
                    "candidates": run.results["rank"].blocks[b.index].num_candidates}
                   for b in t.blocks],
        "supernet_loss": {f"block{b.block}": b.loss for b in run.results["train"].blocks},
        "stages": run.report["stages"] if run.report else {},
    })
    say("search", f"teacher top-1 {t.metrics['top1']:.2f} % ({exp.scale.teacher_epochs} "
                  f"epochs), student {student['params']:,.0f} params (budget "
                  f"{sel.budgets['params']:,.0f})")


# --- step: longer -----------------------------------------------------------------------------

def step_longer(exp: Experiment, state: dict[str, Any]) -> None:
    """The search's pipeline with LONGER x the distillation epochs, run up to the rank stage in
    a copy of the search's run folder: its teacher stage is reused (same config), the block
    supernets are trained and every candidate scored again."""
    import shutil

    import tomli_w

    if not exp.scale.longer:
        return
    folder = exp.root / "run-longer"
    if not (folder / "stages" / "teacher.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(exp.run_dir, folder, ignore=shutil.ignore_patterns(
            "supernets", "rankings", "model", "selection*"))
    config = pipeline(exp)
    config["trainer"]["epochs"] = LONGER * exp.scale.distill_epochs
    toml = exp.root / "pipeline-longer.toml"
    write_text(toml, tomli_w.dumps(config))
    # the copy keeps the search's stage records: train and rank are redone for the new epochs
    run = dnax.run_pipeline(toml, folder, registry=registry("longer"), until="rank", rerun=True)
    if run.results["teacher"].metrics != dnax.load_run(exp.run_dir).results["teacher"].metrics:
        raise SystemExit(f"{folder}: its teacher is not the search's")
    write_scores(run, exp.files["scores-longer.csv"])
