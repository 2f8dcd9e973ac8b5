"""The pipeline runner: stages in order, each resumed when nothing it depends on has changed.

Every stage's result is stored in ``stages/<stage>.json`` with the hash of everything it depends
on: its own config tables plus the hash of the stage before it. On a re-run a stage whose hash is
unchanged is skipped; the first changed stage and every stage after it run again. A stage that
was interrupted finds its partial artefacts (checkpoints) in place and resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
import numpy as np
from attrs import frozen

from .config import PipelineConfig
from .context import DistInfo, Plugins, QuietHooks, StageContext
from .costing import cost
from .errors import ArtifactError, ConfigError, PluginError
from .interfaces import PLUGIN_KINDS
from .preflight import check_pipeline
from .rundir import FORMAT_VERSION, RunDir, atomic_write_text
from .staging import ASIDE, StagedRunDir, finish_swaps, plan_stages, swap
from .types import (
    BlockPlan,
    Plan,
    RankResult,
    RetrainResult,
    Selection,
    TeacherResult,
    TrainResult,
)


@frozen
class Stage:
    """A pipeline stage: the tables it depends on, where it writes, what it returns."""

    name: str
    tables: tuple[str, ...]
    folders: tuple[str, ...]
    result_type: type
    run: Callable[[StageContext], Any]
    #: files at the run folder's top level that the stage writes (besides its folders)
    files: tuple[str, ...] = ()

    @property
    def owned(self) -> tuple[str, ...]:
        """Every top-level name the stage writes: its folders and files."""
        return self.folders + self.files


def _teacher(ctx: StageContext) -> TeacherResult:
    return ctx.plugins.teacher.prepare(ctx)


def _train(ctx: StageContext) -> TrainResult:
    ctx.plugins.space.check_blocks(ctx.results["teacher"].blocks)
    return ctx.plugins.trainer.train(ctx)


def _rank(ctx: StageContext) -> RankResult:
    result = ctx.plugins.evaluator.rank(ctx)
    ctx.dist.barrier()  # process 0 has written every ranking before anyone reads one
    if ctx.dist.is_main:  # rankings stored with ctx.run_dir.save_ranking have fired no hook yet
        blocks = {b.index: b for b in ctx.results["teacher"].blocks}
        for ref in result.blocks:
            if ref.block not in ctx.ranked:
                ctx.hook.dnax_block_ranked(block=blocks[ref.block],
                                           ranking=ctx.run_dir.load_ranking(ref))
    return result


def _select(ctx: StageContext) -> Selection:
    teacher: TeacherResult = ctx.results["teacher"]
    rankings = [ctx.run_dir.load_ranking(ref) for ref in ctx.results["rank"].blocks]
    costed = cost(ctx, teacher.blocks, rankings)
    selection = ctx.plugins.selector.select(ctx, costed.rankings, costed.fixed)
    if not isinstance(selection, Selection) or not selection.arch_def:
        raise PluginError(f"$.selector: {type(ctx.plugins.selector).__name__}.select returned "
                          f"{type(selection).__name__} without an arch_def; build it with "
                          "self.selection(ctx, rankings, candidates, ...)")
    ctx.hook.dnax_selection_made(selection=selection)
    if ctx.dist.is_main:
        ctx.run_dir.write_json("selection.json", _conv.unstructure(selection), kind="selection")
    return selection


def _retrain(ctx: StageContext) -> RetrainResult:
    return ctx.plugins.retrainer.retrain(ctx, ctx.results["select"])


STAGES: tuple[Stage, ...] = (
    Stage("teacher", ("pipeline", "data", "teacher"), ("teacher",), TeacherResult, _teacher),
    Stage("train", ("space", "trainer"), ("supernets",), TrainResult, _train),
    Stage("rank", ("evaluator",), ("rankings",), RankResult, _rank),
    Stage("select", ("costs", "selector"), ("selection",), Selection, _select,
          ("selection.json",)),
    Stage("retrain", ("retrainer",), ("model",), RetrainResult, _retrain),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
#: the plugin kind that runs each stage
_OWNER = {k.stage: k for k in PLUGIN_KINDS if k.stage is not None}

_conv = cattrs.Converter()


def configured_stages(config: PipelineConfig) -> list[Stage]:
    """The stages a pipeline runs: teacher (a required table), then each stage whose table is
    present."""
    return [s for s in STAGES if _OWNER[s.name].required or _OWNER[s.name].name in config.sections]


def instantiate(config: PipelineConfig, registry: Any) -> Plugins:
    """Build every plugin of ``config`` from ``registry``."""
    def make(sec: Any) -> Any:
        return None if sec is None else registry.create_plugin(sec.kind, sec.plugin, sec.config)

    return Plugins(**{k.name: tuple(make(c) for c in config.costs) if k.many
                      else make(config.section(k.name)) for k in PLUGIN_KINDS})


def build_plan(config: PipelineConfig, plugins: Plugins) -> Plan:
    """What the pipeline will search, from the teacher's blocks and the space's cells."""
    res = config.pipeline.resolution
    blocks = plugins.teacher.blocks(res)
    plugins.space.check_blocks(blocks)
    return Plan(
        teacher=config.sections["teacher"].plugin,
        space=config.sections["space"].plugin,
        resolution=res,
        blocks=tuple(BlockPlan(b, plugins.space.cells(b)) for b in blocks),
    )


def stage_tables(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The config tables each configured stage depends on (with the digests of the files they
    name), as its hash covers them and its record stores them."""
    tables = config.to_dict()
    for kind, sec in config.sections.items():
        tables[kind]["files"] = file_digests(sec.config)
        for key in runtime_keys(sec.config):  # how fast, not what: a change keeps the results
            tables[kind].pop(key, None)
    for table, sec in zip(tables.get("costs", []), config.costs, strict=True):
        table["files"] = file_digests(sec.config)
    settings = dict(tables["pipeline"])
    settings.pop("name", None)
    settings.pop("device", None)  # moving a run between devices keeps its results
    settings.pop("threads", None)
    tables["pipeline"] = settings
    return {stage.name: {t: tables.get(t) for t in stage.tables}
            for stage in configured_stages(config)}


def runtime_keys(config: Any) -> set[str]:
    """The keys of a plugin config marked ``runtime`` (speed only, such as ``num_workers``)."""
    return {a.name for a in attrs.fields(type(config)) if a.metadata.get("runtime")} if attrs.has(
        type(config)) else set()


def stage_hashes(config: PipelineConfig) -> dict[str, str]:
    """The hash of each configured stage: its tables plus the previous stage's hash."""
    prev = f"dnax-format-{FORMAT_VERSION}"
    out = {}
    for name, tables in stage_tables(config).items():
        body = json.dumps([prev, tables], sort_keys=True)
        prev = out[name] = hashlib.sha256(body.encode()).hexdigest()[:16]
    return out


def file_digests(config: Any) -> dict[str, str]:
    """sha256 of each file a plugin config names (weights, latency tables, ...), so that a stage
    re-runs when such a file changes, not only when its path does."""
    out = {}
    for a in attrs.fields(type(config)) if attrs.has(type(config)) else ():
        value = getattr(config, a.name)
        if isinstance(value, os.PathLike) and os.path.isfile(value):
            out[a.name] = sha256(value)
    return out


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(name: str, dist: DistInfo) -> str:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_process_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"$.pipeline.device: {name!r} asked for, but no CUDA device is present")
    return name


def _setup(config: PipelineConfig, dist: DistInfo) -> str:
    import torch

    device = resolve_device(config.pipeline.device, dist)
    if dist.enabled:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
    if config.pipeline.threads:
        torch.set_num_threads(config.pipeline.threads)
    seed = config.pipeline.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if config.pipeline.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def run(config: PipelineConfig, registry: Any, run_dir: str | os.PathLike,
        *, force: str | None = None, until: str | None = None, rerun: bool = False
        ) -> dict[str, Any]:
    """Run (or resume) the pipeline in ``run_dir``; return each stage's result by name.

    Every check that needs no training (:func:`dnax.preflight.check_pipeline`) and the plan of
    the stages (:func:`dnax.staging.plan_stages`) come before anything is written. ``force``
    re-runs from that stage on even when nothing changed; ``rerun`` redoes whatever the config
    changed (without either, a changed finished stage stops the run); ``until`` stops after that
    stage. A finished stage that is redone writes aside and replaces its old artefacts only when
    it finishes.
    """
    stages = configured_stages(config)
    names = [s.name for s in stages]
    for opt, value in (("--force", force), ("--until", until)):
        if value is not None and value not in names:
            raise ConfigError(f"{opt}: unknown stage {value!r} (stages: {', '.join(names)})")
    if until is not None:
        stages = stages[:names.index(until) + 1]
    rd = RunDir(run_dir)
    dist = DistInfo.from_env()
    device = _setup(config, dist)
    plugins = instantiate(config, registry)
    check_pipeline(config, plugins, rd.root)
    if dist.is_main:
        finish_swaps(rd)  # a swap a kill interrupted: its stage had finished
    dist.barrier()
    hashes = stage_hashes(config)
    tables = stage_tables(config)
    runtime = {f"{kind}.{key}" for kind, sec in config.sections.items()
               for key in runtime_keys(sec.config)}
    plan = plan_stages(rd, stages, tables, hashes, force=force, rerun=rerun, runtime=runtime)
    hook = registry.hook if dist.is_main else QuietHooks()
    if dist.is_main:
        rd.root.mkdir(parents=True, exist_ok=True)
        text = config.to_toml()
        if not rd.exists("config.toml") or rd.path("config.toml").read_text() != text:
            atomic_write_text(rd.path("config.toml"), text)  # a rerun leaves it untouched
    dist.barrier()

    results: dict[str, Any] = {}
    timings: dict[str, dict[str, Any]] = {}
    hook.dnax_pipeline_start(config=config, run_dir=rd.root, plan=plan)
    for stage, step in zip(stages, plan, strict=True):
        reuse = step.action == "reuse"
        done = _finished(rd, stage) if reuse else None
        where = StagedRunDir(rd.root, stage.name, stage.owned) if step.action == "redo" else rd
        ctx = StageContext(stage.name, config, plugins, where, hook, device, dist, dict(results))
        hook.dnax_stage_start(stage=stage.name, run_dir=rd.root)
        t0 = time.perf_counter()
        if reuse:
            results[stage.name] = done
        else:
            if dist.is_main:
                _begin(where, stage, hashes[stage.name])
            dist.barrier()
            results[stage.name] = stage.run(ctx)
            if dist.is_main:
                record = {"hash": hashes[stage.name], "seconds": time.perf_counter() - t0,
                          "result": _conv.unstructure(results[stage.name]),
                          "files": stage_files(where, stage), "config": tables[stage.name]}
                if isinstance(where, StagedRunDir):
                    swap(rd, stage.name, stage.owned, record, kind="stage")
                else:
                    rd.write_json(f"stages/{stage.name}.json", record, kind="stage")
            dist.barrier()
        seconds = time.perf_counter() - t0
        timings[stage.name] = {"seconds": round(seconds, 3), "skipped": reuse}
        hook.dnax_stage_end(stage=stage.name, run_dir=rd.root, result=results[stage.name],
                            skipped=reuse, seconds=seconds)
    if dist.is_main:
        rd.write_json("report.json", make_report(config, results, timings), kind="report")
    hook.dnax_pipeline_end(config=config, run_dir=rd.root, results=results)
    return results


def _finished(rd: RunDir, stage: Stage) -> Any:
    """The stored result of ``stage``, which the plan reuses (its files checked)."""
    rel = f"stages/{stage.name}.json"
    record = rd.read_json(rel, kind="stage")
    files = record.get("files", {})
    now = stage_files(rd, stage, only=files)
    for f, d in files.items():
        if now.get(f) != d:
            what = "is missing" if f not in now else "changed"
            raise ArtifactError(f"{rd.path(f)}: {what} since the {stage.name} stage finished; "
                                f"restore it, or re-run with --force {stage.name}")
    try:
        return _conv.structure(record["result"], stage.result_type)
    except Exception as e:
        raise ArtifactError(f"{rd.path(rel)}: stored result does not fit "
                            f"{stage.result_type.__name__} ({e}); re-run with --force "
                            f"{stage.name}") from None


def stage_files(rd: RunDir, stage: Stage, only: Mapping[str, Any] | None = None
                ) -> dict[str, str]:
    """Size and sha256 of the files in ``stage``'s folders (or of those named in ``only``)."""
    if only is not None:
        paths = [rd.path(f) for f in only if rd.path(f).is_file()]
    else:
        paths = sorted(p for folder in stage.folders for p in rd.path(folder).rglob("*")
                       if p.is_file() and not p.name.endswith(".tmp"))
    return {rd.rel(p): f"{p.stat().st_size}:{sha256(p)}" for p in paths}


def _begin(rd: RunDir, stage: Stage, digest: str) -> None:
    """Mark ``stage`` as started with ``digest``; a different earlier start clears its folders
    (its partial artefacts were made for another config), the same one keeps them to resume.
    A redone stage (``rd`` a :class:`StagedRunDir`) keeps its marker beside its artefacts."""
    staged = isinstance(rd, StagedRunDir)
    marker = f"{ASIDE}/{stage.name}/started.json" if staged else f"stages/{stage.name}.started.json"
    started = rd.read_json(marker, kind="stage-start") if rd.exists(marker) else None
    done = rd.path(f"stages/{stage.name}.json")
    if started is None or started.get("hash") != digest or (not staged and done.exists()):
        for name in stage.owned:
            path = rd.path(name)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists() and name in stage.files:
                path.unlink()
    for folder in stage.folders:  # what a killed write left behind
        for tmp in rd.path(folder).rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    if not staged:
        done.unlink(missing_ok=True)
    rd.write_json(marker, {"hash": digest}, kind="stage-start")


def make_report(config: PipelineConfig, results: Mapping[str, Any],
                timings: Mapping[str, Any]) -> dict[str, Any]:
    """The summary ``dnax run`` prints and stores as report.json."""
    report: dict[str, Any] = {"pipeline": config.pipeline.name, "stages": dict(timings)}
    if "teacher" in results:
        t: TeacherResult = results["teacher"]
        report["teacher"] = {"model": t.model, **t.metrics}
    if "train" in results:
        report["supernets"] = {f"block{b.block}": b.loss for b in results["train"].blocks}
    if "select" in results:
        s: Selection = results["select"]
        report["selection"] = {"candidates": list(s.candidates), "score": s.score, **s.costs}
    if "retrain" in results:
        report["student"] = dict(results["retrain"].metrics)
    return report


def load_result(rd: RunDir, stage: str) -> Any:
    """A stage's stored result, or None when it has not finished."""
    spec = next(s for s in STAGES if s.name == stage)
    rel = f"stages/{stage}.json"
    if not rd.exists(rel):
        return None
    record = rd.read_json(rel, kind="stage")
    return _conv.structure(record["result"], spec.result_type)


def unstructure(value: Any) -> Any:
    return _conv.unstructure(value)

