"""``dnax bench train | rank | select``: time a stage against its reference in the same run,
print a table (or, with ``--json``, the report) and, with ``--output``, write every figure, the
arguments and the machine to a JSON file. ``dnax bench all`` (:mod:`dnax.cli.bench_all`) runs the
GPU checks of several of them and the digits pipeline in one go, under a deadline.

Expected mistakes raise :class:`dnax.UserError`; :func:`dnax.cli.common.user_errors` turns them
into one ``error: ...`` line per problem on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import attrs
import numpy as np
import typer
from rich.table import Table

import dnax
from dnax.cli.common import err, json_default, out, user_errors
from dnax.registry import get_registry

bench_app = typer.Typer(no_args_is_help=True, help="Measure the speed of each stage.")

PRESETS = {"paper": ("efficientnet_b0", "paper")}  # teacher model, mbconv space preset
GOAL_STEP = 1.25  # issue 4: a step within 1.25x of its floor
GOAL_RANK = 3.0  # issue 5: tree walk >= 3x the plain loop
GOAL_RANK_FLOOR = 1.5  # issue 23: tree walk within 1.5x of its floor
RANK_RECAL = ("same", "train", "separate", "off")
RANK_MAX_BATCH = 1024  # the tree walk's MAX_BATCH (not imported here: torch loads lazily)
GOAL_SELECT_S = 0.1  # issue 6: the paper's space solved in under 0.1 s


# --- options shared by the commands ------------------------------------------------------------

OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="JSON file to write the report to [default: none, only printed].",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    help="torch CPU threads for the run (1 keeps a busy machine's timings steady) "
         "[default: leave as is].", show_default=False)]
SeedOpt = Annotated[int, typer.Option(help="Seed of the random inputs and paths.")]


def _check(problems: list[str]) -> None:
    if problems:
        raise dnax.ConfigError(problems)


def _need(problems: list[str], ok: bool, line: str) -> None:
    if not ok:
        problems.append(line)


def _choice(problems: list[str], name: str, value: str, choices: Sequence[str]) -> None:
    _need(problems, value in choices,
          f"{name}: {value!r} is not one of {', '.join(choices)}")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise dnax.ConfigError(f"--device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise dnax.ConfigError(f"--device: {name!r} asked for, but no CUDA device is present")
    return name


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the report: JSON and table -------------------------------------------------------------

def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads and, on CUDA, the GPU name."""
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"dnax": dnax.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}


def _command(what: str, positional: Sequence[str], options: Mapping[str, Any]) -> str:
    """The command line that repeats this run (every option spelt out)."""
    parts = ["dnax", "bench", what, *positional]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def _ratio(figures: Mapping[str, float], a: str, b: str, goal: str | None,
           met: Callable[[float], bool] | None) -> dict[str, Any]:
    value = figures[a] / figures[b]
    return {"value": value, "of": [a, b], "goal": goal,
            "met": None if met is None else bool(met(value))}


def _report(what: str, command: str, arguments: Mapping[str, Any], figures: Mapping[str, float],
            ratios: Mapping[str, Any], goals: Mapping[str, Any], details: Mapping[str, Any],
            device: str) -> dict[str, Any]:
    return {
        "bench": what, "command": command, "arguments": dict(arguments),
        "figures": dict(figures), "ratios": dict(ratios), "goals": dict(goals),
        "details": dict(details), "machine": machine(device), "versions": versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _emit(report: dict[str, Any], table: Table, output: Path | None, as_json: bool) -> None:
    """Write the report to ``output`` (only when given) and print it: JSON or the table."""
    text = json.dumps(report, indent=2, default=json_default) + "\n"
    if output is not None:
        try:
            dnax.rundir.atomic_write_text(output, text)
        except OSError as e:
            raise dnax.ConfigError(f"--output: cannot write {output} ({e.strerror or e})"
                                   ) from None
    if as_json:
        sys.stdout.write(text)
    else:
        out.print(table)
        if output is not None:
            out.print(f"written: {output}", markup=False, highlight=False)


def fmt(v: float) -> str:
    """A figure as the table prints it: 4 significant digits, thousands grouped."""
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _goal_cell(goal: str | None, met: bool | None) -> str:
    if goal is None:
        return ""
    return f"{goal} ({'met' if met else 'NOT met'})"


Row = tuple[str, str, str]  # measure, value, goal: one line of a bench table


def _table(title: str, caption: str, rows: Sequence[Row]) -> Table:
    t = Table(title=title, caption=caption, caption_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("goal")
    for row in rows:
        t.add_row(*row)
    return t


def _host(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['cpu_count']} cores"
    return f"{where}, {m['torch_threads']} torch thread(s); {report['date'][:10]}"


# --- dnax bench train ---------------------------------------------------------------------

def _teacher_and_space(pipeline: Path | None, preset: str | None,
                       teacher_model: str | None = None) -> tuple[str, Any, Any, Any]:
    """(label, teacher, space, pipeline config or None) from a TOML or a preset (whose teacher
    is ``teacher_model`` when given)."""
    registry = get_registry()
    if pipeline is not None:
        config = dnax.load_pipeline(pipeline, registry)
        plugins = dnax.runner.instantiate(config, registry)
        name = getattr(plugins.teacher, "name", None)
        label = (f"{config.sections['teacher'].plugin} teacher"
                 f"{f' ({name})' if isinstance(name, str) else ''}, "
                 f"{config.sections['space'].plugin} space of {pipeline.name}")
        return label, plugins.teacher, plugins.space, config
    assert preset is not None
    model, space_preset = PRESETS[preset]
    model = teacher_model or model
    t_cls = registry.get("teacher", "efficientnet").cls
    s_cls = registry.get("space", "mbconv").cls
    teacher = registry.create_plugin("teacher", "efficientnet", t_cls.Config(model=model))
    space = registry.create_plugin("space", "mbconv", s_cls.Config(preset=space_preset))
    return f"{model} teacher, mbconv space preset '{space_preset}'", teacher, space, None


def _scratch_context(config: dnax.PipelineConfig | None, teacher: dnax.Teacher, scratch: str,
                     resolution: int, device: str) -> dnax.StageContext | None:
    """A teacher-stage context over a scratch run directory, for a teacher that must be
    prepared before it can be timed (None without a pipeline: a preset's teacher never is)."""
    if config is None:
        return None
    config = attrs.evolve(config, pipeline=attrs.evolve(config.pipeline, resolution=resolution))
    registry = get_registry()
    plugins = attrs.evolve(dnax.runner.instantiate(config, registry), teacher=teacher)
    return dnax.StageContext("teacher", config, plugins, dnax.RunDir(scratch), registry.hook,
                             device)


@bench_app.command()
@user_errors
def train(
    pipeline: Annotated[Path | None, typer.Argument(
        help="Pipeline TOML: its teacher and space are timed (or give --preset).",
        show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        help="'paper': EfficientNet-B0 teacher + the paper's space, instead of a TOML.",
        show_default=False)] = None,
    teacher_model: Annotated[str | None, typer.Option(
        help="timm model of the --preset's teacher, e.g. tf_efficientnet_b7 (the paper's; "
             "untrained: timing only) (default: the preset's).", show_default=False)] = None,
    resolution: Annotated[int | None, typer.Option(
        help="Input size in px [default: the pipeline's, 224 for a preset].",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    device: Annotated[str | None, typer.Option(
        help="auto, cpu, cuda or cuda:N [default: the pipeline's, auto for a preset].",
        show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="Timed steps (the median is kept).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed steps before each measurement.")] = 3,
    amp: Annotated[str, typer.Option(
        help="Mixed precision on CUDA: none, bf16 or fp16 (CPU runs float32).")] = "bf16",
    channels_last: Annotated[bool, typer.Option(
        help="Channels-last memory on CUDA.")] = True,
    sampling: Annotated[str, typer.Option(
        help="Path sampling of the step: uniform or fair.")] = "uniform",
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time the supernet step beside its floor and the official block-after-block schedule."""
    problems: list[str] = []
    _need(problems, (pipeline is None) != (preset is None),
          "PIPELINE or --preset: give exactly one of them")
    if preset is not None:
        _choice(problems, "--preset", preset, tuple(PRESETS))
    _positive(problems, resolution=resolution, batch_size=batch_size, steps=steps,
              threads=threads)
    _need(problems, warmup >= 0, f"--warmup: must be >= 0, got {warmup}")
    _choice(problems, "--amp", amp, ("none", "bf16", "fp16"))
    _choice(problems, "--sampling", sampling, ("uniform", "fair"))
    _need(problems, teacher_model is None or preset is not None,
          "--teacher-model: only with --preset (a pipeline names its own teacher)")
    _check(problems)

    with err.status("building the teacher network") as status:
        report, rows, caption = train_report(
            pipeline, preset, teacher_model=teacher_model, resolution=resolution,
            batch_size=batch_size, device=device, steps=steps, warmup=warmup, amp=amp,
            channels_last=channels_last, sampling=sampling, threads=threads, seed=seed,
            progress=status.update)
    _emit(report, _table("dnax bench train", caption, rows), output, as_json)


def train_report(pipeline: Path | None, preset: str | None, *,
                 teacher_model: str | None = None, resolution: int | None = None,
                 batch_size: int = 64, device: str | None = None, steps: int = 20,
                 warmup: int = 3, amp: str = "bf16", channels_last: bool = True,
                 sampling: str = "uniform", threads: int | None = None, seed: int = 0,
                 progress: Callable[[str], Any] | None = None
                 ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench train`` measures (options checked): its report, table rows, caption."""
    label, teacher, space, config = _teacher_and_space(pipeline, preset, teacher_model)
    res = resolution or (config.pipeline.resolution if config is not None else 224)
    dev = _device(device or (config.pipeline.device if config is not None else "auto"))
    blocks = teacher.blocks(res)
    space.check_blocks(blocks)
    from dnax.plugins.measure.bench_train import UNTRAINED, bench_train, teacher_network

    say = progress or (lambda _: None)
    with _threads(threads), tempfile.TemporaryDirectory(prefix="dnax-bench-") as scratch:
        ctx = _scratch_context(config, teacher, scratch, res, dev)
        model, weights = teacher_network(teacher, ctx)
        say("timing the supernet step, its floor and the official schedule")
        result = bench_train(teacher, model, space, blocks=blocks, resolution=res,
                             batch_size=batch_size, device=dev, steps=steps, warmup=warmup,
                             amp=amp, channels_last=channels_last, sampling=sampling, seed=seed)
        options = {"preset": preset, "teacher_model": teacher_model, "resolution": res,
                   "batch_size": batch_size, "device": dev, "steps": steps, "warmup": warmup,
                   "amp": amp, "channels_last": channels_last, "sampling": sampling,
                   "threads": threads, "seed": seed}
        names = ("step_ms", "teacher_ms", "student_ms", "floor_ms", "official_ms",
                 "images_per_s")
        figures = {k: result[k] for k in names}
        ratios = {
            "step_over_floor": _ratio(figures, "step_ms", "floor_ms", f"<= {GOAL_STEP}x",
                                      lambda r: r <= GOAL_STEP),
            "official_over_step": _ratio(figures, "official_ms", "step_ms", None, None),
        }
        details = {k: v for k, v in result.items()
                   if k not in figures and k not in ratios}
        details["teacher_weights"] = weights
        report = _report("train", _command("train", [str(pipeline)] if pipeline else [],
                                           options),
                         {"pipeline": str(pipeline) if pipeline else None, **options},
                         figures, ratios, {}, details, dev)

    r = ratios
    rows = [
        ("step: all cells, one teacher forward", f"{fmt(figures['step_ms'])} ms", ""),
        ("  floor: teacher forward", f"{fmt(figures['teacher_ms'])} ms", ""),
        ("  floor: students fwd/bwd, fixed paths", f"{fmt(figures['student_ms'])} ms", ""),
        ("  floor (sum)", f"{fmt(figures['floor_ms'])} ms", ""),
        ("step / floor", f"{r['step_over_floor']['value']:.2f}x",
         _goal_cell(r["step_over_floor"]["goal"], r["step_over_floor"]["met"])),
        ("official: block after block", f"{fmt(figures['official_ms'])} ms", ""),
        ("official / step", f"{r['official_over_step']['value']:.2f}x",
         "> 1x: dnax faster"),
        ("step throughput", f"{fmt(figures['images_per_s'])} img/s", ""),
    ]
    shown = ("untrained teacher weights" if weights == UNTRAINED
             else "teacher weights from its prepare()")
    caption = (f"{label}; {shown} (timing only). {result['blocks']} blocks, "
               f"{result['cells']} cells (the official schedule re-runs the teacher prefix for "
               f"each cell); batch {batch_size} at {res} px on {dev}, "
               f"amp {result['amp']}; medians of {steps} steps after {warmup} warm-up. "
               f"{_host(report)}")
    return report, rows, caption


def _positive(problems: list[str], **values: int | None) -> None:
    for name, v in values.items():
        _need(problems, v is None or v > 0,
              f"--{name.replace('_', '-')}: must be > 0, got {v}")


# --- dnax bench rank ----------------------------------------------------------------------

@bench_app.command()
@user_errors
def rank(
    depth: Annotated[int, typer.Option(help="Layers of the benchmark cell.")] = 4,
    ops: Annotated[int, typer.Option(help="Ops per layer (the paper's 6 first, up to 15).")] = 6,
    batch_size: Annotated[int, typer.Option(help="Images per scoring batch.")] = 8,
    batches: Annotated[int, typer.Option(help="Scoring batches.")] = 1,
    size: Annotated[int, typer.Option(help="Block input size in px (stride 2 inside).")] = 16,
    recal: Annotated[str, typer.Option(
        help="BatchNorm recalibration per candidate: same (the scoring batches), train (one "
             "batch of its own, as the evaluator's default), separate (as many batches of "
             "their own as scoring batches) or off.")] = "same",
    max_batch: Annotated[int, typer.Option(
        help="The most scoring images one forward of the tree walk takes.")] = RANK_MAX_BATCH,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = False,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time the prefix-shared tree walk against the plain per-candidate loop and its floor."""
    from dnax.plugins.measure.bench_rank import OPS

    problems: list[str] = []
    _positive(problems, depth=depth, batch_size=batch_size, batches=batches, size=size,
              max_batch=max_batch, threads=threads)
    _need(problems, 1 <= ops <= len(OPS), f"--ops: must be in 1..{len(OPS)}, got {ops}")
    _choice(problems, "--recal", recal, RANK_RECAL)
    _check(problems)
    _device(device)

    with err.status("timing the tree walk, its floor and the plain loop") as status:
        report, rows, caption = rank_report(
            depth, ops, batch_size=batch_size, batches=batches, size=size, recal=recal,
            max_batch=max_batch, device=device, amp=amp, threads=threads, seed=seed,
            progress=lambda s: status.update(f"timing the {s}"))
    _emit(report, _table("dnax bench rank", caption, rows), output, as_json)


def rank_report(depth: int = 4, ops: int = 6, *, batch_size: int = 8, batches: int = 1,
                size: int = 16, recal: str = "same", max_batch: int = RANK_MAX_BATCH,
                device: str = "auto", amp: bool = False, threads: int | None = None,
                seed: int = 0, progress: Callable[[str], Any] | None = None
                ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench rank`` measures (options checked): its report, table rows, caption."""
    from dnax.plugins.measure.bench_rank import bench_rank

    dev = _device(device)
    result = bench_rank(depth, ops, batch_size=batch_size, batches=batches, size=size,
                        recal=cast(Literal["same", "train", "separate", "off"], recal),
                        device=dev, amp=amp, seed=seed, max_batch=max_batch, threads=threads,
                        progress=progress)
    options = {"depth": depth, "ops": ops, "batch_size": batch_size, "batches": batches,
               "size": size, "recal": recal, "max_batch": max_batch, "device": dev, "amp": amp,
               "threads": threads, "seed": seed}
    figures = {k: result[k] for k in ("tree_s", "floor_s", "plain_s")}
    ratios = {"speedup": _ratio(figures, "plain_s", "tree_s", f">= {GOAL_RANK:g}x",
                                lambda r: r >= GOAL_RANK),
              "over_floor": _ratio(figures, "tree_s", "floor_s", f"<= {GOAL_RANK_FLOOR:g}x",
                                   lambda r: r <= GOAL_RANK_FLOOR)}
    details = {k: v for k, v in result.items() if k not in figures and k not in ratios}
    with _threads(threads):
        report = _report("rank", _command("rank", [], options), options, figures, ratios, {},
                         details, dev)
    sp, fl = ratios["speedup"], ratios["over_floor"]
    rows = [
        ("tree walk (shared prefixes)", f"{fmt(figures['tree_s'])} s", ""),
        (f"  floor: {result['floor_nodes']} node forwards, all images in one batch",
         f"{fmt(figures['floor_s'])} s", ""),
        ("tree / floor", f"{fl['value']:.2f}x", _goal_cell(fl["goal"], fl["met"])),
        ("plain loop (one by one)", f"{fmt(figures['plain_s'])} s", ""),
        ("plain / tree", f"{sp['value']:.2f}x", _goal_cell(sp["goal"], sp["met"])),
        ("largest relative score difference", f"{result['max_rel_diff']:.2g}", ""),
    ]
    caption = (f"one cell of {depth} layers x {ops} ops = {result['candidates']} candidates; "
               f"{batches} batch(es) of {batch_size} at {size} px (the walk: up to {max_batch} "
               f"images a forward); BN recalibration {recal}; floor: each of the "
               f"{result['floor_shapes']} distinct op shapes timed once (median of 3) on all "
               f"scoring images as one batch (+ its recalibration forward), times its nodes; "
               f"{dev}. {_host(report)}")
    return report, rows, caption


# --- dnax bench select --------------------------------------------------------------------

@bench_app.command()
@user_errors
def select(
    metrics: Annotated[str, typer.Option(
        help="Budgeted costs, comma-separated: any of params, flops, latency "
             "(latency: synthetic, correlated with params and FLOPs).")] = "params",
    top_k: Annotated[int, typer.Option(help="Best networks returned.")] = 5,
    repeats: Annotated[int, typer.Option(help="Solves timed per instance (median).")] = 5,
    tightness: Annotated[str, typer.Option(
        help="Budget between the cheapest (0) and the dearest (1) network; several, "
             "comma-separated, make a family with --seeds.")] = "0.5",
    seed: Annotated[int, typer.Option(help="Seed of the first synthetic instance.")] = 0,
    seeds: Annotated[int, typer.Option(
        help="Instances per tightness, seeds SEED .. SEED+N-1.")] = 1,
    check: Annotated[bool, typer.Option(
        help="Check every best score against scipy's HiGHS MILP (seconds per instance).")
    ] = False,
    time_limit: Annotated[float, typer.Option(help="The selector's time limit (s).")] = 60.0,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time the exact selector on the paper-sized space (288 .. 16848 candidates per block)."""
    from dnax.plugins.measure.bench_select import METRICS, bench_select

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    problems: list[str] = []
    _need(problems, bool(names), f"--metrics: give at least one of {', '.join(METRICS)}")
    for m in names:
        _choice(problems, "--metrics", m, METRICS)
    _need(problems, len(set(names)) == len(names), f"--metrics: {metrics!r} repeats a metric")
    _positive(problems, top_k=top_k, repeats=repeats, seeds=seeds, time_limit=time_limit)
    tights: list[float] = []
    for t in tightness.split(","):
        try:
            tights.append(float(t))
        except ValueError:
            problems.append(f"--tightness: {t.strip()!r} is not a number")
    _need(problems, all(0.0 <= t <= 1.0 for t in tights),
          f"--tightness: every value must be in 0..1, got {tightness}")
    _check(problems)

    with err.status("solving paper-sized instances") as status:
        result = bench_select(names, seeds=range(seed, seed + seeds), tightness=tights,
                              repeats=repeats, top_k=top_k, check=check,
                              time_limit=time_limit,
                              progress=lambda m: status.update(f"solving: {m}"))
    options = {"metrics": ",".join(names), "top_k": top_k, "repeats": repeats,
               "tightness": tightness, "seed": seed, "seeds": seeds, "check": check,
               "time_limit": time_limit}
    median_goal, max_goal = (1.0, 5.0) if len(names) >= 3 else (GOAL_SELECT_S, None)
    figures = {"seconds": result["seconds"], "max_seconds": result["max_seconds"]}
    goals = {"seconds": {"value": result["seconds"], "goal": f"< {fmt(median_goal * 1e3)} ms",
                         "met": result["seconds"] < median_goal}}
    if max_goal is not None:
        goals["max_seconds"] = {"value": result["max_seconds"],
                                "goal": f"< {fmt(max_goal * 1e3)} ms",
                                "met": result["max_seconds"] < max_goal}
    details = {k: v for k, v in result.items() if k not in figures}
    report = _report("select", _command("select", [], options), options, figures, {}, goals,
                     details, "cpu")
    n = result["instances"]
    median = (f"exact solve, median of {repeats}" if n == 1
              else f"exact solve, median over {n} instances")
    rows = [
        (median, f"{fmt(result['seconds'] * 1e3)} ms",
         _goal_cell(goals["seconds"]["goal"], goals["seconds"]["met"])),
        (f"exact solve, worst of {n}", f"{fmt(result['max_seconds'] * 1e3)} ms",
         _goal_cell(goals["max_seconds"]["goal"], goals["max_seconds"]["met"])
         if "max_seconds" in goals else ""),
        ("proven optimal", f"{sum(r['optimal'] for r in result['runs'])} of {n}", ""),
        ("networks in the space", f"{result['networks']:.3g}", ""),
        ("candidates per block", " / ".join(str(c) for c in result["candidates"]), ""),
    ]
    if check:
        same = sum(r["matches_highs"] for r in result["runs"])
        highs = float(np.median([r["highs_seconds"] for r in result["runs"]]))
        rows += [("best score equal to HiGHS (1e-9 relative)", f"{same} of {n}", ""),
                 ("HiGHS MILP, median", f"{fmt(highs * 1e3)} ms", "")]
    if n == 1:
        run = result["runs"][0]
        rows += [*((f"budget: {m}", fmt(b), "") for m, b in run["budgets"].items()),
                 *((f"best network: {m}", fmt(float(c)), "") for m, c in run["costs"].items()),
                 ("best network: summed score", f"{float(run['score']):.4g}", ""),
                 ("Pareto front (networks)", str(run["front"]), "")]
    caption = (f"synthetic paper-sized instances (seeds {seed}..{seed + seeds - 1}, "
               f"tightness {tightness}): B0-width costs at 224 px, scores falling with size; "
               f"top-{top_k}. {_host(report)}")
    _emit(report, _table("dnax bench select", caption, rows), output, as_json)


# --- dnax bench all (its own module, which reads the helpers above when it runs) ------------

from dnax.cli.bench_all import bench_all  # noqa: E402  (after the helpers it uses)

bench_app.command("all")(user_errors(bench_all))
