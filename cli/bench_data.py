"""``dnax bench data``: the ``distill`` step fed from image files against the same step on a
batch already on the device (see :mod:`dnax.plugins.measure.bench_data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dnax.cli.bench import (
    JsonOpt,
    OutputOpt,
    SeedOpt,
    ThreadsOpt,
    _check,
    _choice,
    _emit,
    _need,
    _positive,
    _table,
    bench_app,
    err,
)
from dnax.cli.common import user_errors
from dnax.plugins.measure.reports import PRESETS, data_report


@bench_app.command()
@user_errors
def data(
    folder: Annotated[Path | None, typer.Option(
        help="ImageNet-layout folder (train/<class>/*.jpg) [default: Fashion-MNIST upscaled "
             "to --resolution as JPEGs in a scratch folder].", show_default=False)] = None,
    source: Annotated[Path | None, typer.Option(
        help="Folder of Fashion-MNIST's gzip IDX files, for the default folder [default: "
             "/usr/share/datasets/fashion-mnist].", show_default=False)] = None,
    preset: Annotated[str, typer.Option(
        help="'paper': EfficientNet-B0 teacher + the paper's space.")] = "paper",
    resolution: Annotated[int, typer.Option(help="Input size in px.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    steps: Annotated[int, typer.Option(help="Timed steps per measurement.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps before each measurement.")] = 2,
    workers: Annotated[str, typer.Option(
        help='DataLoader worker processes: a count or "auto".')] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(
        help="Mixed precision on CUDA: none, bf16 or fp16 (CPU runs float32).")] = "bf16",
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time the distill step fed from image files against the step on data on the device."""
    problems: list[str] = []
    _choice(problems, "--preset", preset, tuple(PRESETS))
    _positive(problems, resolution=resolution, batch_size=batch_size, steps=steps,
              threads=threads)
    _need(problems, warmup >= 0, f"--warmup: must be >= 0, got {warmup}")
    _need(problems, workers == "auto" or workers.isdigit(),
          f'--workers: must be "auto" or a count, got {workers!r}')
    _choice(problems, "--amp", amp, ("none", "bf16", "fp16"))
    _check(problems)
    with err.status("making the image folder") as status:
        report, rows, caption = data_report(
            folder, preset, source=source, resolution=resolution, batch_size=batch_size,
            steps=steps, warmup=warmup, workers=workers if workers == "auto" else int(workers),
            device=device, amp=amp, threads=threads, seed=seed, progress=status.update)
    _emit(report, _table("dnax bench data", caption, rows), output, as_json)


