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
        "latency-<device>.json); other devices' entries in it are kept.", show_default=False)
                      ] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Images per forward. 1 is the mobile-latency convention; give your serving "
        "batch to budget throughput-bound devices.")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per op; the median is kept.")
                       ] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before timing each op.")
                      ] = 10,
    check: Annotated[int, typer.Option(
        "--check", min=0, metavar="K", help="Then build K random networks of the space, time "
        "them end to end and compare with the table's prediction (0: no check).")] = 0,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the --check networks (default: the pipeline's).", show_default=False)
                    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")
                       ] = False,
    device: Annotated[str | None, typer.Option(
        help="'cpu', 'cuda', 'cuda:N' (default: the pipeline's device).", show_default=False)
                      ] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch CPU threads while measuring (CPU latency depends on it) "
        "(default: leave as is).", show_default=False)] = None,
) -> None:
    """Measure the latency of every layer op of the space and of the fixed parts on this device.

    Writes the table the `latency` cost model reads: per distinct op (arch string, input channels
    and size, batch) and for the stem, unsearched stages and head, the median time in ms.
    """
    import torch

    from dnax.cli.observer import RichObserver
    from dnax.plugins.costs import profile as prof

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
        table = prof.profile(config, registry, batch_size=batch_size, repeats=repeats,
                             warmup=warmup, device=device)
        seconds = time.perf_counter() - t0
        path = Path(output) if output is not None else prof.default_output(pipeline, table)
        prof.write_table(path, table)
        result = (prof.check(config, registry, path, check, seed, device=device)
                  if check else None)
    finally:
        if observer is not None:
            observer.progress.stop()
            registry.pm.unregister(observer)
    name = table["device"]
    summary = _summary(path, name, table["devices"][name], seconds, result)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    out.print(_table_summary(summary))
    if result is not None:
        out.print(_check_table(summary["check"]))


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _summary(path: Path, name: str, entry: dict[str, Any], seconds: float, result: Any
             ) -> dict[str, Any]:
    data: dict[str, Any] = {
        "table": str(path), "device": name,
        **{k: entry[k] for k in ("device_type", "batch_size", "resolution", "threads",
                                 "repeats", "warmup")},
        "ops": len(entry["ops"]), "ops_ms": sum(entry["ops"].values()),
        "fixed": entry["fixed"], "seconds": round(seconds, 3), "check": None,
    }
    if result is not None:
        data["check"] = {
            "networks": [{"candidates": list(c), "predicted_ms": p, "measured_ms": m}
                         for c, p, m in zip(result.choices, result.predicted, result.measured,
                                            strict=True)],
            "spearman": _finite(result.spearman), "kendall": _finite(result.kendall),
        }
    return data


def _table_summary(s: dict[str, Any]) -> Table:
    t = Table(title=f"latency table: {s['device']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("device", f"{s['device']} ({s['device_type']}, {s['threads']} "
                        f"thread{'' if s['threads'] == 1 else 's'})")
    t.add_row("batch, resolution", f"{s['batch_size']} x {s['resolution']} px")
    t.add_row("ops measured", f"{s['ops']} (median of {s['repeats']} after {s['warmup']} "
                              "warm-up runs)")
    for key, ms in s["fixed"].items():
        t.add_row(key.split(":", 1)[0], f"{ms:.4g} ms  [dim]{key}[/]")
    t.add_row("time", f"{s['seconds']:.1f} s")
    t.add_row("written", str(s["table"]))
    return t


def _check_table(c: dict[str, Any]) -> Table:
    t = Table(title=f"check: {len(c['networks'])} random networks, ms per batch")
    for col in ("#", "candidates", "predicted", "measured", "error"):
        t.add_column(col, justify="right")
    for i, n in enumerate(c["networks"], 1):
        p, m = n["predicted_ms"], n["measured_ms"]
        t.add_row(str(i), ",".join(map(str, n["candidates"])), f"{p:.4g}", f"{m:.4g}",
                  f"{100 * (p - m) / m:+.1f} %" if m > 0 else "n/a")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    t.caption = f"rank correlation: Spearman {fmt(c['spearman'])}, Kendall tau {fmt(c['kendall'])}"
    return t
