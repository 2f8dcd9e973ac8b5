"""``dnax profile``: measure a latency table for the ``latency`` cost model, and check it.

Registered in :mod:`dnax.cli.app` as ``app.command("profile")(user_errors(profile_command))``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dnax.cli.common import err, out
from dnax.registry import get_registry


def profile_command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline TOML file.", show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Latency table to write (default: <pipeline dir>/"
        "latency-<device>.json); its other devices' and runtimes' entries are kept.",
        show_default=False)] = None,
    runtime: Annotated[str, typer.Option(
        help="What runs the networks: 'torch' (eager) or 'onnxruntime' (each network exported "
        "to ONNX, CPUExecutionProvider, intra-op threads = --threads).")] = "torch",
    batch_size: Annotated[int, typer.Option(
        min=1, help="Images per forward. 1 is the mobile-latency convention; give your serving "
        "batch to budget throughput-bound devices.")] = 1,
    networks: Annotated[int, typer.Option(
        min=1, help="Whole networks measured for the table and its calibration (more when "
        "needed for every op to run --occurrences times).")] = 30,
    occurrences: Annotated[int, typer.Option(
        min=1, help="Least number of measured networks every layer op, stem and head runs "
        "in.")] = 2,
    repeats: Annotated[int, typer.Option(
        min=1, help="At most this many timed runs of each network (the protocol's cap).")] = 50,
    min_repeats: Annotated[int, typer.Option(
        min=2, help="At least this many timed runs before stability is checked.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs of each network first.")] = 5,
    tolerance: Annotated[float, typer.Option(
        min=0.0, max=99.0, help="Stop repeating once every network's statistic of its odd and "
        "of its even runs agree within this many percent.")] = 2.0,
    statistic: Annotated[str, typer.Option(
        help="Statistic of the timed runs: 'fast-quarter' (the median of the fastest quarter: "
        "steady where other jobs share the machine), 'median' or 'min'.")] = "fast-quarter",
    check: Annotated[int, typer.Option(
        "--check", min=0, metavar="K", help="Then build K random networks the calibration was "
        "not fitted on, time them end to end and compare with the prediction (0: no check).")
                     ] = 0,
    check_only: Annotated[bool, typer.Option(
        "--check-only", help="Check the table already at --output (or the default path) "
        "without measuring it again.")] = False,
    max_error: Annotated[float, typer.Option(
        min=0.0, help="The check's error threshold in percent: it warns when more than 10 % "
        "of the networks are further than this from their prediction.")] = 10.0,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 when the check warns.")] = False,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the --check networks (default: the pipeline's).", show_default=False)
                    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")
                       ] = False,
    device: Annotated[str | None, typer.Option(
        help="'cpu', 'cuda', 'cuda:N' (default: the pipeline's device).", show_default=False)
                      ] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads while measuring (torch's, or onnxruntime's intra-op threads; "
        "CPU latency depends on it) (default: leave torch's as is).", show_default=False)
                       ] = None,
) -> None:
    """Measure the latency of the space's networks on this device and write the table the
    `latency` cost model reads.

    Random whole networks are timed end to end and layer by layer (each layer where it runs,
    after its predecessor); per distinct op (arch string, input channels and size, batch) and
    for the stem, unsearched stages and head the table keeps the op's time, and a calibration
    fitted on the networks' end-to-end times.
    """
    import torch

    import dnax
    from dnax.cli.observer import RichObserver
    from dnax.plugins.costs import latency
    from dnax.plugins.costs.runtimes import device_name
    from dnax.plugins.measure import profile as prof

    if check_only and not check:
        raise dnax.ConfigError("--check-only: give --check K too")
    registry = get_registry()
    for failure in registry.failures:
        err.print(f"warning: {failure}", markup=False)
    config = prof.load_for_profile(pipeline, registry)
    threads = threads or getattr(config.pipeline, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    observer = None if as_json else RichObserver(out)
    if observer is not None:
        registry.pm.register(observer, name="dnax-cli-observer")
        observer.progress.start()
    try:
        t0 = time.perf_counter()
        if check_only:
            ctx = prof.make_context(config, registry, device)
            name = device_name(ctx.device)
            path = Path(output) if output is not None else (
                Path(pipeline).resolve().parent / f"latency-{prof.slug(name)}.json")
            table = latency.read_table(path)
            key, _ = latency.device_entry(table, name, path, runtime)
            table = {**table, "device": key}
        else:
            table = prof.profile(config, registry, batch_size=batch_size, repeats=repeats,
                                 warmup=warmup, min_repeats=min_repeats,
                                 tolerance=tolerance / 100, statistic_name=statistic,
                                 networks=networks, occurrences=occurrences, device=device,
                                 runtime=runtime, seed=None)
            path = Path(output) if output is not None else prof.default_output(pipeline, table)
            prof.write_table(path, table)
        seconds = time.perf_counter() - t0
        result = (prof.check(config, registry, path, check, seed, device=device,
                             runtime=runtime) if check else None)
    finally:
        if observer is not None:
            observer.progress.stop()
            registry.pm.unregister(observer)
    name = table["device"]
    summary = _summary(path, name, table["devices"][name], seconds, result, max_error)
    warning = _warning(summary["check"])
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.print(_table_summary(summary))
        if result is not None:
            out.print(_check_table(summary["check"]))
    if warning:
        err.print(f"warning: {warning}", markup=False)
        if strict:
            raise typer.Exit(1)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _summary(path: Path, name: str, entry: dict[str, Any], seconds: float, result: Any,
             max_error: float) -> dict[str, Any]:
    cal = entry["calibration"]
    data: dict[str, Any] = {
        "table": str(path), "device": name, "runtime": entry.get("runtime", "torch"),
        **{k: entry.get(k) for k in ("device_type", "batch_size", "resolution", "threads",
                                     "protocol", "networks", "load_average")},
        "ops": len(entry["ops"]), "ops_ms": sum(entry["ops"].values()),
        "fixed": entry["fixed"],
        "calibration": {k: v for k, v in cal.items() if k != "choices"},
        "seconds": round(seconds, 3), "check": None,
    }
    if result is not None:
        share = result.within(max_error, adjusted=True)
        data["check"] = {
            "runtime": result.runtime,
            "networks": [{"candidates": list(c), "predicted_ms": p, "measured_ms": m,
                          "error_pct": e, "adjusted_error_pct": a, "stable": s}
                         for c, p, m, e, a, s in zip(
                             result.choices, result.predicted, result.measured, result.errors,
                             result.errors_pct(adjusted=True),
                             result.stable or [None] * len(result.choices), strict=True)],
            "max_error_pct": max_error,
            "within_pct": 100 * result.within(max_error),
            "median_abs_error_pct": result.median_abs_error(),
            "worst_error_pct": result.worst_error(),
            "spearman": _finite(result.spearman), "kendall": _finite(result.kendall),
            "drift": result.drift, "anchors": result.anchors,
            "adjusted": {"within_pct": 100 * share,
                         "median_abs_error_pct": result.median_abs_error(adjusted=True),
                         "worst_error_pct": result.worst_error(adjusted=True)},
            "load_average": list(result.load),
            "ok": share >= 0.9 and abs(result.drift - 1) * 100 <= max_error,
        }
    return data


def _warning(c: dict[str, Any] | None) -> str | None:
    """One line when the table's error (the anchors' drift taken out) or the machine's drift
    since the table was measured is above --max-error; None when neither is."""
    if c is None or c["ok"]:
        return None
    n, limit = len(c["networks"]), c["max_error_pct"]
    adj = c["adjusted"]
    off = sum(abs(x["adjusted_error_pct"]) > limit for x in c["networks"])
    load = ", ".join(f"{v:.2f}" for v in c["load_average"])
    parts = []
    if adj["within_pct"] < 90:
        parts.append(f"{off} of {n} networks ({100 * off / n:.0f} %) are more than {limit:g} % "
                     f"off their predicted latency (worst {adj['worst_error_pct']:+.1f} %, "
                     f"median |error| {adj['median_abs_error_pct']:.1f} %, the machine's drift "
                     "taken out)")
    if abs(c["drift"] - 1) * 100 > limit:
        parts.append(f"the machine runs {100 * (c['drift'] - 1):+.0f} % against the table's "
                     f"measurement (anchors: {c['anchors']})")
    return ("; ".join(parts) + f"; load average {load}: the table does not predict this "
            "machine's latency to --max-error now: re-measure when it is quieter or with more "
            "--repeats")


def _table_summary(s: dict[str, Any]) -> Table:
    t = Table(title=f"latency table: {s['device']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    p = s["protocol"] or {}
    t.add_row("device", f"{s['device']} ({s['device_type']}, {s['runtime']}, {s['threads']} "
                        f"thread{'' if s['threads'] == 1 else 's'})")
    t.add_row("batch, resolution", f"{s['batch_size']} x {s['resolution']} px")
    nets = s["networks"] or {}
    t.add_row("networks measured", f"{nets.get('measured')} (every op in at least "
                                   f"{nets.get('min_occurrences')}); {s['ops']} ops")
    t.add_row("protocol", f"{p.get('statistic')} of {p.get('min_repeats')}.."
                          f"{p.get('max_repeats')} runs after {p.get('warmup')} warm-up runs, "
                          "stable to "
                          f"{100 * float(p.get('tolerance', 0)):g} % "
                          f"({100 * float(nets.get('stable_share', 0)):.0f} % of networks were)")
    cal = s["calibration"]
    t.add_row("calibration", f"{cal['scale']:.4g} x sum + {cal['per_layer_ms']:.4g} ms x layers "
                             f"+ {cal['offset_ms']:.4g} ms (fits {cal['networks']} networks "
                             f"within {cal['fit_median_abs_error_pct']:.1f} % median)")
    for key, ms in s["fixed"].items():
        t.add_row(key.split(":", 1)[0], f"{ms:.4g} ms  [dim]{key}[/]")
    t.add_row("time", f"{s['seconds']:.1f} s")
    t.add_row("written", str(s["table"]))
    return t


def _check_table(c: dict[str, Any]) -> Table:
    t = Table(title=f"check: {len(c['networks'])} random networks not fitted on, ms per batch "
                    f"({c['runtime']})")
    for col in ("#", "candidates", "predicted", "measured", "error"):
        t.add_column(col, justify="right")
    for i, n in enumerate(c["networks"], 1):
        p, m = n["predicted_ms"], n["measured_ms"]
        t.add_row(str(i), ",".join(map(str, n["candidates"])), f"{p:.4g}", f"{m:.4g}",
                  f"{n['error_pct']:+.1f} %" if m > 0 else "n/a")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    a = c["adjusted"]
    t.caption = (f"within ±{c['max_error_pct']:g} %: {c['within_pct']:.0f} % of networks; "
                 f"|error| median {c['median_abs_error_pct']:.1f} %, worst "
                 f"{c['worst_error_pct']:+.1f} %; rank correlation: Spearman "
                 f"{fmt(c['spearman'])}, Kendall tau {fmt(c['kendall'])}\n"
                 f"machine drift since the table: x{c['drift']:.3f} ({c['anchors']} anchors); "
                 f"drift taken out: within ±{c['max_error_pct']:g} %: {a['within_pct']:.0f} %, "
                 f"|error| median {a['median_abs_error_pct']:.1f} %, worst "
                 f"{a['worst_error_pct']:+.1f} %")
    return t
