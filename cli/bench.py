"""``dnax bench train | rank | select``: time a stage against its reference in the same run,
print a table (or, with ``--json``, the report) and, with ``--output``, write every figure, the
arguments and the machine to a JSON file. ``dnax bench all`` (:mod:`dnax.cli.bench_all`) runs the
GPU checks of several of them and the digits pipeline in one go, under a deadline.

Expected mistakes raise :class:`dnax.UserError`; :func:`dnax.cli.common.user_errors` turns them
into one ``error: ...`` line per problem on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import dnax
from dnax.cli.bench_all import bench_all
from dnax.cli.common import err, json_default, out, user_errors
from dnax.plugins.measure.reports import (
    PRESETS,
    RANK_MAX_BATCH,
    RANK_RECAL,
    Row,
    rank_report,
    resolve_device,
    select_report,
    train_report,
)

bench_app = typer.Typer(no_args_is_help=True, help="Measure the speed of each stage.")


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


# --- the report: JSON and table -------------------------------------------------------------


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


def _table(title: str, caption: str, rows: Sequence[Row]) -> Table:
    t = Table(title=title, caption=caption, caption_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("goal")
    for row in rows:
        t.add_row(*row)
    return t


# --- dnax bench train ---------------------------------------------------------------------


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
    resolve_device(device)

    with err.status("timing the tree walk, its floor and the plain loop") as status:
        report, rows, caption = rank_report(
            depth, ops, batch_size=batch_size, batches=batches, size=size, recal=recal,
            max_batch=max_batch, device=device, amp=amp, threads=threads, seed=seed,
            progress=lambda s: status.update(f"timing the {s}"))
    _emit(report, _table("dnax bench rank", caption, rows), output, as_json)


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
    from dnax.plugins.measure.bench_select import METRICS

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
        report, rows, caption = select_report(
            names, tightness, top_k=top_k, repeats=repeats, seed=seed, seeds=seeds,
            check=check, time_limit=time_limit,
            progress=lambda m: status.update(f"solving: {m}"))
    _emit(report, _table("dnax bench select", caption, rows), output, as_json)


bench_app.command("all")(user_errors(bench_all))
