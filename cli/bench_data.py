"""``dnax bench data``: the ``distill`` step fed from image files against the same step on a
batch already on the device (see :mod:`dnax.plugins.measure.bench_data`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

import dnax
from dnax.cli.bench import (
    PRESETS,
    JsonOpt,
    OutputOpt,
    Row,
    SeedOpt,
    ThreadsOpt,
    _check,
    _choice,
    _command,
    _device,
    _emit,
    _host,
    _need,
    _positive,
    _ratio,
    _report,
    _table,
    _teacher_and_space,
    _threads,
    bench_app,
    err,
    fmt,
)
from dnax.cli.common import user_errors

GOAL_FED = 0.9  # issue 23: fed from files, the step keeps >= 90 % of its on-device speed


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


def fashion_in_memory(source: Path, device: str, seed: int) -> dict[str, float]:
    """Fashion-MNIST's train split at 28 px, augmented, batches of 256: per image against
    gathered on ``device`` (:func:`dnax.plugins.measure.bench_data.bench_in_memory`)."""
    from dnax.plugins.data.fashion_mnist import FashionMNIST, FashionMNISTConfig
    from dnax.plugins.measure.bench_data import bench_in_memory

    config = dnax.DataConfig(input_size=(3, 28, 28), mean=(0.5,) * 3, std=(0.25,) * 3,
                             interpolation="bicubic", crop_pct=1.0)
    data = FashionMNIST(FashionMNISTConfig(root=source)).dataset("train", config, augment=True)
    return bench_in_memory(data, batch_size=256, batches=20, device=device, seed=seed)


def data_report(folder: Path | None, preset: str = "paper", *, source: Path | None = None,
                resolution: int = 224,
                batch_size: int = 64, steps: int = 10, warmup: int = 2,
                workers: dnax.Workers = "auto", device: str = "auto", amp: str = "bf16",
                threads: int | None = None, seed: int = 0, progress: Any = None
                ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench data`` measures: its report, table rows, caption."""
    from dnax.plugins.data.fashion_mnist import DEBIAN_ROOT
    from dnax.plugins.data.folder import Folder, FolderConfig
    from dnax.plugins.measure.bench_data import bench_data, jpeg_folder
    from dnax.plugins.measure.bench_train import teacher_network

    say = progress or (lambda _: None)
    label, teacher, space, _ = _teacher_and_space(None, preset)
    dev = _device(device)
    blocks = teacher.blocks(resolution)
    need = (steps + warmup) * batch_size
    with _threads(threads), tempfile.TemporaryDirectory(prefix="dnax-bench-data-") as scratch:
        source_dir = source or DEBIAN_ROOT
        root = folder or jpeg_folder(Path(scratch), images=need + batch_size, size=resolution,
                                     source=source_dir)
        source = Folder(FolderConfig(root=root, heldout_fraction=0.0, val_dir="train"))
        dataset = source.dataset("train", teacher.data_config(resolution), augment=True)
        model, _ = teacher_network(teacher)
        say("timing the step on the device, fed from files, and the loader alone")
        result = bench_data(teacher, model, space, dataset, blocks=blocks,
                            batch_size=batch_size, steps=steps, warmup=warmup, device=dev,
                            num_workers=workers, amp=amp, seed=seed)
        say("timing Fashion-MNIST in memory: per image against gathered on the device")
        result |= fashion_in_memory(source_dir, dev, seed)
        options = {"folder": str(folder) if folder else None,
                   "source": str(source) if source else None, "preset": preset,
                   "resolution": resolution, "batch_size": batch_size, "steps": steps,
                   "warmup": warmup, "workers": workers, "device": dev, "amp": amp,
                   "threads": threads, "seed": seed}
        names = ("resident_images_per_s", "fed_images_per_s", "loader_images_per_s",
                 "per_image_images_per_s", "gathered_images_per_s")
        figures = {k: result[k] for k in names}
        ratios = {"fed_over_resident": _ratio(figures, "fed_images_per_s", "resident_images_per_s",
                                              f">= {GOAL_FED:.0%} (on a GPU)",
                                              lambda r: r >= GOAL_FED),
                  "gathered_over_per_image": _ratio(figures, "gathered_images_per_s",
                                                    "per_image_images_per_s", None, None)}
        details = {k: v for k, v in result.items() if k not in figures and k not in ratios}
        report = _report("data", _command("data", [], options), options, figures, ratios, {},
                         details, dev)
    r = ratios["fed_over_resident"]
    rows = [
        ("step on a batch on the device", f"{fmt(figures['resident_images_per_s'])} img/s", ""),
        ("step fed from the image files", f"{fmt(figures['fed_images_per_s'])} img/s", ""),
        ("fed / on the device", f"{r['value']:.1%}", f"{r['goal']} "
         f"({'met' if r['met'] else 'NOT met'})"),
        ("loader alone: decode + augment", f"{fmt(figures['loader_images_per_s'])} img/s", ""),
        ("Fashion-MNIST 28 px: per image", f"{fmt(figures['per_image_images_per_s'])} img/s",
         ""),
        ("  gathered on the device", f"{fmt(figures['gathered_images_per_s'])} img/s", ""),
        ("  gathered / per image", f"{ratios['gathered_over_per_image']['value']:.2f}x", ""),
    ]
    caption = (f"{label}, untrained (timing only); {result['images']} JPEGs from "
               f"{folder or 'Fashion-MNIST upscaled'} at {resolution} px, timm's train "
               f"transform, {result['workers']} worker process(es); batch {batch_size} on "
               f"{dev}, amp {result['amp']}; {steps} steps after {warmup}. {_host(report)}")
    return report, rows, caption
