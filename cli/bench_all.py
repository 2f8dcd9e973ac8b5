"""``dnax bench all --output DIR``: one prepared run that proves dnax's CUDA paths and measures
them under a deadline, writing ``DIR/bench.json`` and ``DIR/bench.md``. The parts, their
processes and the deadline are :mod:`dnax.plugins.measure.suite`'s; this module checks the
options and renders the report.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from dnax.plugins.measure.suite import PARTS, run_parts

#: the digits example, looked for under the working directory, then beside this source tree
DIGITS = Path("docs", "examples", "digits.toml")


# --- rendering ------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: the parts with their status and time, then a table per part
    (naming every figure of a part that did not run, with the reason)."""
    lines = ["# dnax bench all", "", f"`{report['command']}`", "",
             f"Device: {report['device']} ({report['machine']['gpu'] or report['machine']['cpu']}"
             f"); dnax {report['versions']['dnax']}, torch {report['versions']['torch']}; "
             f"{report['date']}.", ""]
    if report["tiny"]:
        lines += ["**Tiny sizes (the CPU smoke run): these are not performance figures.**", ""]
    state = "finished" if report["done"] else "still running"
    lines += [f"Deadline {report['deadline_s']:g} s; own time {report['elapsed_s']:.1f} s "
              f"({state}).", "",
              "| part | status | seconds | budget (s) | time given (s) | note |",
              "|---|---|---:|---:|---:|---|"]
    for name, p in report["parts"].items():
        secs = "" if p.get("seconds") is None else f"{p['seconds']:.1f}"
        given = "" if p.get("timeout_s") is None else f"{p['timeout_s']:.0f}"
        lines.append(f"| {name} | {p['status']} | {secs} | {p['budget_s']:g} | {given} | "
                     f"{_cell(p.get('reason', ''))} |")
    for name, p in report["parts"].items():
        lines += ["", f"## {name}: {PARTS[name].title}", ""]
        if p["status"] == "ok":
            lines += [_cell(p["caption"]), ""]
            rows = p["rows"]
        else:
            lines += [f"Not measured ({p['status']}): {_cell(p.get('reason', ''))}", ""]
            rows = [(f, "-", "") for f in PARTS[name].figures]
        lines += ["| measure | value | goal |", "|---|---:|---|",
                  *(f"| {_cell(m)} | {_cell(v)} | {_cell(g)} |" for m, v, g in rows)]
    return "\n".join(lines) + "\n"


def _summary(report: Mapping[str, Any]) -> Any:
    """The parts, their status and time, as a rich table for the terminal."""
    from rich.table import Table

    t = Table(title="dnax bench all", caption_justify="left",
              caption=f"deadline {report['deadline_s']:g} s, own time "
              f"{report['elapsed_s']:.1f} s on {report['device']}"
              + ("; tiny sizes: not performance figures" if report["tiny"] else ""))
    for col in ("part", "status", "seconds", "budget (s)", "note"):
        t.add_column(col, justify="right" if col in ("seconds", "budget (s)") else "left")
    for name, p in report["parts"].items():
        t.add_row(name, p["status"], "" if "seconds" not in p else f"{p['seconds']:.1f}",
                  f"{p['budget_s']:g}", p.get("reason", ""))
    return t


def _write(output: Path, report: dict[str, Any]) -> None:
    import dnax
    from dnax.cli.common import json_default

    dnax.rundir.atomic_write_text(output / "bench.json",
                                  json.dumps(report, indent=2, default=json_default) + "\n")
    dnax.rundir.atomic_write_text(output / "bench.md", markdown(report))


def _budgets(names: Sequence[str], given: Sequence[str], tiny: bool) -> dict[str, float]:
    import dnax

    budgets = {n: PARTS[n].tiny_budget if tiny else PARTS[n].budget for n in names}
    problems = []
    for item in given:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in budgets or seconds <= 0:
            problems.append(f"--budget: {item!r} is not PART=SECONDS with PART one of "
                            f"{', '.join(names)} and SECONDS > 0")
        else:
            budgets[name] = seconds
    if problems:
        raise dnax.ConfigError(problems)
    return budgets


def _digits_toml(given: Path | None) -> Path:
    import dnax

    if given is not None:
        if not given.is_file():
            raise dnax.ConfigError(f"--pipeline: {given}: no such file")
        return given.resolve()
    for path in (Path.cwd() / DIGITS, Path(__file__).resolve().parents[1] / DIGITS):
        if path.is_file():
            return path
    raise dnax.ConfigError(f"--pipeline: no {DIGITS} under the working directory: give the "
                           "digits pipeline's TOML")


def bench_all(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for bench.json, bench.md and each part's files.",
        show_default=False)],
    deadline: Annotated[float, typer.Option(
        help="Seconds for the whole run: a part whose budget no longer fits is skipped.")
    ] = 270.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tiny: Annotated[bool | None, typer.Option(
        help="Tiny sizes (a smoke test, not performance figures) (default: on the CPU only).",
        show_default=False)] = None,
    parts: Annotated[str, typer.Option(
        help="Parts to run, comma-separated, in order.")] = ",".join(PARTS),
    budget: Annotated[list[str] | None, typer.Option(
        help="PART=SECONDS: a part's budget instead of its default (repeatable).",
        show_default=False)] = None,
    pipeline: Annotated[Path | None, typer.Option(
        help=f"The digits pipeline (default: {DIGITS}).", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch CPU threads in every part (default: leave as is).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs and paths.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")
                       ] = False,
) -> None:
    """Every GPU check in one go under a deadline: the digits pipeline, bench train with a B7
    teacher, bench rank with and without autocast and profile --check."""
    import dnax
    from dnax.cli.common import err, out
    from dnax.plugins.measure.reports import command_line, machine, resolve_device, versions

    t0 = time.perf_counter()
    names = [n.strip() for n in parts.split(",") if n.strip()]
    problems = [f"--parts: {n!r} is not one of {', '.join(PARTS)}" for n in names
                if n not in PARTS]
    if not names or len(set(names)) != len(names):
        problems.append(f"--parts: {parts!r}: give each part at most once, at least one")
    if deadline <= 0:
        problems.append(f"--deadline: must be > 0, got {deadline:g}")
    if problems:
        raise dnax.ConfigError(problems)
    dev = resolve_device(device)
    small = (not dev.startswith("cuda")) if tiny is None else tiny
    budgets = _budgets(names, budget or [], small)
    digits = _digits_toml(pipeline)
    output.mkdir(parents=True, exist_ok=True)
    work = output / "parts"
    if work.exists():  # an earlier run's parts (a digits run there would only resume)
        if not (output / "bench.json").exists():
            raise dnax.ConfigError(f"--output: {work} exists and is not from dnax bench all")
        shutil.rmtree(work)

    options = {"output": output, "deadline": deadline, "device": dev, "tiny": small,
               "parts": ",".join(names), "pipeline": digits, "threads": threads, "seed": seed}
    command = command_line("all", [], options)
    for name, seconds in budgets.items():
        if seconds != (PARTS[name].tiny_budget if small else PARTS[name].budget):
            command += f" --budget {name}={seconds:g}"
    report: dict[str, Any] = {
        "bench": "all", "command": command,
        "arguments": {**options, "budgets": budgets}, "device": dev, "tiny": small,
        "deadline_s": deadline, "elapsed_s": 0.0, "done": False,
        "parts": {n: {"status": "pending", "budget_s": budgets[n]} for n in names},
        "machine": machine(dev), "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }
    settings = {"device": dev, "tiny": small, "threads": threads, "seed": seed,
                "pipeline": str(digits)}
    run_parts(report, names, budgets, settings, work, deadline, t0,
              on_update=lambda r: _write(output, r), say=lambda m: err.print(m, markup=False))
    report["done"] = True
    report["elapsed_s"] = time.perf_counter() - t0
    _write(output, report)

    if as_json:
        sys.stdout.write((output / "bench.json").read_text())
    else:
        out.print(_summary(report))
        out.print(f"written: {output / 'bench.json'}, {output / 'bench.md'}", markup=False,
                  highlight=False)
    if any(p["status"] in ("failed", "timed out") for p in report["parts"].values()):
        raise typer.Exit(1)
