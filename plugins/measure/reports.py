"""The reports of ``dnax bench train | rank | select | data``: what each measures, as a report
(figures, ratios against their goals, details, the machine and versions), the rows of its table
and a caption. The CLI (:mod:`dnax.cli.bench`) checks the options and renders them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import numpy as np

import dnax
from dnax.registry import get_registry

PRESETS = {"paper": ("efficientnet_b0", "paper")}  # teacher model, mbconv space preset


GOAL_STEP = 1.25  # issue 4: a step within 1.25x of its floor


GOAL_RANK = 3.0  # issue 5: tree walk >= 3x the plain loop


GOAL_RANK_FLOOR = 1.5  # issue 23: tree walk within 1.5x of its floor


RANK_RECAL = ("same", "train", "separate", "off")


RANK_MAX_BATCH = 1024  # the tree walk's MAX_BATCH (not imported here: torch loads lazily)


GOAL_SELECT_S = 0.1  # issue 6: the paper's space solved in under 0.1 s


def resolve_device(name: str) -> str:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise dnax.ConfigError(f"--device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise dnax.ConfigError(f"--device: {name!r} asked for, but no CUDA device is present")
    return name


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` (None: as they are) for the block."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads and, on CUDA, the GPU name."""
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"dnax": dnax.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}


def command_line(what: str, positional: Sequence[str], options: Mapping[str, Any]) -> str:
    """The command line that repeats this run (every option spelt out)."""
    parts = ["dnax", "bench", what, *positional]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def ratio(figures: Mapping[str, float], a: str, b: str, goal: str | None,
          met: Callable[[float], bool] | None) -> dict[str, Any]:
    """``figures[a] / figures[b]`` with its goal and whether ``met`` holds."""
    value = figures[a] / figures[b]
    return {"value": value, "of": [a, b], "goal": goal,
            "met": None if met is None else bool(met(value))}


def make_report(what: str, command: str, arguments: Mapping[str, Any],
                figures: Mapping[str, float], ratios: Mapping[str, Any], goals: Mapping[str, Any],
                details: Mapping[str, Any], device: str) -> dict[str, Any]:
    """A bench's report as ``--output`` writes it, with the machine, versions and date."""
    return {
        "bench": what, "command": command, "arguments": dict(arguments),
        "figures": dict(figures), "ratios": dict(ratios), "goals": dict(goals),
        "details": dict(details), "machine": machine(device), "versions": versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def fmt(v: float) -> str:
    """A figure as the table prints it: 4 significant digits, thousands grouped."""
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def goal_cell(goal: str | None, met: bool | None) -> str:
    if goal is None:
        return ""
    return f"{goal} ({'met' if met else 'NOT met'})"


Row = tuple[str, str, str]  # measure, value, goal: one line of a bench table


def host(report: Mapping[str, Any]) -> str:
    """Where a report was measured, for a caption."""
    m = report["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['cpu_count']} cores"
    return f"{where}, {m['torch_threads']} torch thread(s); {report['date'][:10]}"


def teacher_and_space(pipeline: Path | None, preset: str | None,
                      teacher_model: str | None = None) -> tuple[str, Any, Any, Any]:
    """(label, teacher, space, pipeline config or None) from a TOML or a preset (whose teacher
    is ``teacher_model`` when given)."""
    registry = get_registry()
    if pipeline is not None:
        config = dnax.load_pipeline(pipeline, registry)
        plugins = dnax.build_plugins(config, registry)
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


def scratch_context(config: dnax.PipelineConfig | None, teacher: dnax.Teacher, scratch: str,
                     resolution: int, device: str) -> dnax.StageContext | None:
    """A teacher-stage context over a scratch run directory, for a teacher that must be
    prepared before it can be timed (None without a pipeline: a preset's teacher never is)."""
    if config is None:
        return None
    config = attrs.evolve(config, pipeline=attrs.evolve(config.pipeline, resolution=resolution))
    registry = get_registry()
    plugins = attrs.evolve(dnax.build_plugins(config, registry), teacher=teacher)
    return dnax.StageContext("teacher", config, plugins, dnax.RunDir(scratch), registry.hook,
                             device)


def train_report(pipeline: Path | None, preset: str | None, *,
                 teacher_model: str | None = None, resolution: int | None = None,
                 batch_size: int = 64, device: str | None = None, steps: int = 20,
                 warmup: int = 3, amp: str = "bf16", channels_last: bool = True,
                 sampling: str = "uniform", threads: int | None = None, seed: int = 0,
                 progress: Callable[[str], Any] | None = None
                 ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench train`` measures (options checked): its report, table rows, caption."""
    label, teacher, space, config = teacher_and_space(pipeline, preset, teacher_model)
    res = resolution or (config.pipeline.resolution if config is not None else 224)
    dev = resolve_device(device or (config.pipeline.device if config is not None else "auto"))
    blocks = teacher.blocks(res)
    space.check_blocks(blocks)
    from dnax.plugins.measure.bench_train import UNTRAINED, bench_train, teacher_network

    say = progress or (lambda _: None)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="dnax-bench-") as scratch:
        ctx = scratch_context(config, teacher, scratch, res, dev)
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
            "step_over_floor": ratio(figures, "step_ms", "floor_ms", f"<= {GOAL_STEP}x",
                                     lambda r: r <= GOAL_STEP),
            "official_over_step": ratio(figures, "official_ms", "step_ms", None, None),
        }
        details = {k: v for k, v in result.items()
                   if k not in figures and k not in ratios}
        details["teacher_weights"] = weights
        report = make_report("train", command_line("train", [str(pipeline)] if pipeline else [],
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
         goal_cell(r["step_over_floor"]["goal"], r["step_over_floor"]["met"])),
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
               f"{host(report)}")
    return report, rows, caption


def rank_report(depth: int = 4, ops: int = 6, *, batch_size: int = 8, batches: int = 1,
                size: int = 16, recal: str = "same", max_batch: int = RANK_MAX_BATCH,
                device: str = "auto", amp: bool = False, threads: int | None = None,
                seed: int = 0, progress: Callable[[str], Any] | None = None
                ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench rank`` measures (options checked): its report, table rows, caption."""
    from dnax.plugins.measure.bench_rank import bench_rank

    dev = resolve_device(device)
    result = bench_rank(depth, ops, batch_size=batch_size, batches=batches, size=size,
                        recal=cast(Literal["same", "train", "separate", "off"], recal),
                        device=dev, amp=amp, seed=seed, max_batch=max_batch, threads=threads,
                        progress=progress)
    options = {"depth": depth, "ops": ops, "batch_size": batch_size, "batches": batches,
               "size": size, "recal": recal, "max_batch": max_batch, "device": dev, "amp": amp,
               "threads": threads, "seed": seed}
    figures = {k: result[k] for k in ("tree_s", "floor_s", "plain_s")}
    ratios = {"speedup": ratio(figures, "plain_s", "tree_s", f">= {GOAL_RANK:g}x",
                               lambda r: r >= GOAL_RANK),
              "over_floor": ratio(figures, "tree_s", "floor_s", f"<= {GOAL_RANK_FLOOR:g}x",
                                  lambda r: r <= GOAL_RANK_FLOOR)}
    details = {k: v for k, v in result.items() if k not in figures and k not in ratios}
    with torch_threads(threads):
        report = make_report("rank", command_line("rank", [], options), options, figures,
                             ratios, {}, details, dev)
    sp, fl = ratios["speedup"], ratios["over_floor"]
    rows = [
        ("tree walk (shared prefixes)", f"{fmt(figures['tree_s'])} s", ""),
        (f"  floor: {result['floor_nodes']} node forwards, all images in one batch",
         f"{fmt(figures['floor_s'])} s", ""),
        ("tree / floor", f"{fl['value']:.2f}x", goal_cell(fl["goal"], fl["met"])),
        ("plain loop (one by one)", f"{fmt(figures['plain_s'])} s", ""),
        ("plain / tree", f"{sp['value']:.2f}x", goal_cell(sp["goal"], sp["met"])),
        ("largest relative score difference", f"{result['max_rel_diff']:.2g}", ""),
    ]
    caption = (f"one cell of {depth} layers x {ops} ops = {result['candidates']} candidates; "
               f"{batches} batch(es) of {batch_size} at {size} px (the walk: up to {max_batch} "
               f"images a forward); BN recalibration {recal}; floor: each of the "
               f"{result['floor_shapes']} distinct op shapes timed once (median of 3) on all "
               f"scoring images as one batch (+ its recalibration forward), times its nodes; "
               f"{dev}. {host(report)}")
    return report, rows, caption


GOAL_FED = 0.9  # issue 23: fed from files, the step keeps >= 90 % of its on-device speed


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
    label, teacher, space, _ = teacher_and_space(None, preset)
    dev = resolve_device(device)
    blocks = teacher.blocks(resolution)
    need = (steps + warmup) * batch_size
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="dnax-bench-data-") as scratch:
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
        ratios = {"fed_over_resident": ratio(figures, "fed_images_per_s", "resident_images_per_s",
                                             f">= {GOAL_FED:.0%} (on a GPU)",
                                             lambda r: r >= GOAL_FED),
                  "gathered_over_per_image": ratio(figures, "gathered_images_per_s",
                                                   "per_image_images_per_s", None, None)}
        details = {k: v for k, v in result.items() if k not in figures and k not in ratios}
        report = make_report("data", command_line("data", [], options), options, figures,
                             ratios, {}, details, dev)
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
               f"{dev}, amp {result['amp']}; {steps} steps after {warmup}. {host(report)}")
    return report, rows, caption


def select_report(names: Sequence[str], tightness: str, *, top_k: int = 5, repeats: int = 5,
                  seed: int = 0, seeds: int = 1, check: bool = False, time_limit: float = 60.0,
                  progress: Callable[[str], Any] | None = None
                  ) -> tuple[dict[str, Any], list[Row], str]:
    """What ``dnax bench select`` measures (options checked): its report, table rows, caption.
    ``tightness``: comma-separated budgets between the cheapest (0) and the dearest (1)."""
    from dnax.plugins.measure.bench_select import bench_select

    tights = [float(t) for t in tightness.split(",")]
    result = bench_select(list(names), seeds=range(seed, seed + seeds), tightness=tights,
                          repeats=repeats, top_k=top_k, check=check, time_limit=time_limit,
                          progress=progress)
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
    report = make_report("select", command_line("select", [], options), options, figures, {},
                         goals, details, "cpu")
    n = result["instances"]
    median = (f"exact solve, median of {repeats}" if n == 1
              else f"exact solve, median over {n} instances")
    rows = [
        (median, f"{fmt(result['seconds'] * 1e3)} ms",
         goal_cell(goals["seconds"]["goal"], goals["seconds"]["met"])),
        (f"exact solve, worst of {n}", f"{fmt(result['max_seconds'] * 1e3)} ms",
         goal_cell(goals["max_seconds"]["goal"], goals["max_seconds"]["met"])
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
               f"top-{top_k}. {host(report)}")
    return report, rows, caption
