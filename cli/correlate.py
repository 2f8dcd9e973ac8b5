"""``dnax correlate``: how well a run's ratings rank architectures against a ground-truth CSV.

Registered in :mod:`dnax.cli.app` as ``app.command("correlate")(user_errors(correlate_command))``;
the figures come from :func:`dnax.plugins.measure.correlate.correlate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dnax.cli.common import out, print_json

STATS = (("kendall", "Kendall τ-b"), ("spearman", "Spearman"), ("pearson", "Pearson"))


def correlate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (the rank stage finished).",
                                            show_default=False)],
    truth: Annotated[Path, typer.Argument(
        help="Ground-truth CSV: 'candidates' (or block0..blockN) and 'accuracy' per "
        "architecture, or 'block', 'candidate' and 'loss' per block candidate; optional "
        "'seed' (repeated runs) and 'params'.", show_default=False)],
    column: Annotated[str | None, typer.Option(
        help="The measured column (default: accuracy, or loss for block losses).",
        show_default=False)] = None,
    key: Annotated[str | None, typer.Option(
        help="The run's score to rate by (default: the rank stage's key).",
        show_default=False)] = None,
    versus: Annotated[str | None, typer.Option(
        metavar="COLUMN", help="A second predictor's column in the CSV (e.g. spos_score; higher "
        "is better unless --versus-lower), compared with the run by a paired bootstrap.",
        show_default=False)] = None,
    versus_lower: Annotated[bool, typer.Option(
        "--versus-lower", help="Lower values of --versus are better.")] = False,
    versus_run: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", help="A second run directory as the second predictor.",
        show_default=False)] = None,
    cost: Annotated[str, typer.Option(
        help="The run's cost metric for the parameter terciles and the partial τ.")] = "params",
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    plot: Annotated[Path | None, typer.Option(
        help="Draw the scatter (PNG) here.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")
                       ] = False,
) -> None:
    """How well a run's ratings rank architectures: Kendall τ-b, Spearman and Pearson against a
    CSV of ground truth, with bootstrap 95 % intervals, τ within parameter terciles and given
    parameters, a paired bootstrap against a second predictor, the top pick's regret and the
    noise ceiling between seeds."""
    from dnax.plugins.measure.correlate import correlate

    report = correlate(run_dir, truth, column=column, key=key, versus=versus,
                       versus_lower=versus_lower, versus_run=versus_run, cost=cost,
                       n_boot=bootstrap, seed=seed, plot=plot)
    if as_json:
        print_json(report)
        return
    groups = ([(None, report)] if report["kind"] == "architecture"
              else [(g["block"], g) for g in report["blocks"]])
    for block, group in groups:
        out.print(predictors_table(report, group, block))
        params = params_table(report, group)
        if params is not None:
            out.print(params)
        for line in _lines(report, group):
            out.print(line, markup=False)
    if report["plot"]:
        out.print(f"scatter: {report['plot']}", markup=False)


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(stat: Mapping[str, Any]) -> str:
    lo, hi = stat["ci"]
    return f"{_f(stat['value'])} [{_f(lo, 2)}, {_f(hi, 2)}]"


def _unit(u: list[int]) -> str:
    return " ".join(map(str, u))


def predictors_table(report: Mapping[str, Any], group: Mapping[str, Any], block: int | None
                     ) -> Table:
    what = "architectures" if block is None else f"candidates of block {block}"
    conf = round(report["bootstrap"]["confidence"] * 100)
    t = Table(title=f"{report['run_dir']} against {report['truth']}: {group['n']} {what}")
    t.add_column("predictor")
    for _, label in STATS:
        t.add_column(f"{label} [{conf} % CI]", justify="right")
    t.add_column("regret", justify="right")
    t.add_column("top pick (true rank)", justify="right")
    for name, p in group["predictors"].items():
        label = (f"dnax -{report['key']}" if name == "dnax" else
                 "params (more is better)" if name == "params" else name)
        t.add_row(label, *(_ci(p[s]) for s, _ in STATS), _f(p["regret"], 4),
                  f"{_unit(p['top_unit'][-1:] if block is not None else p['top_unit'])} "
                  f"({p['true_rank']} of {group['n']})")
    t.caption = (f"{report['direction']}; bootstrap {report['bootstrap']['n']} resamples, seed "
                 f"{report['bootstrap']['seed']}; regret = best {report['column']} - that of "
                 "the top pick" if report["kind"] == "architecture" else
                 f"{report['direction']}; bootstrap {report['bootstrap']['n']} resamples, seed "
                 f"{report['bootstrap']['seed']}; regret = top pick's {report['column']} - the "
                 "best")
    return t


def params_table(report: Mapping[str, Any], group: Mapping[str, Any]) -> Table | None:
    if "terciles" not in group:
        return None
    t = Table(title=f"dnax within {report['cost']} terciles ({report['params_source']})")
    t.add_column("tercile", justify="right")
    t.add_column("n", justify="right")
    t.add_column(report["cost"], justify="right")
    t.add_column("Kendall τ-b [CI]", justify="right")
    for row in group["terciles"]:
        lo, hi = row["params"]
        t.add_row(str(row["tercile"]), str(row["n"]), f"{lo:,.0f}..{hi:,.0f}", _ci(row["kendall"]))
    t.caption = f"partial τ given {report['cost']}: {_ci(group['partial_kendall'])}"
    return t


def _lines(report: Mapping[str, Any], group: Mapping[str, Any]) -> list[str]:
    lines = []
    d = group.get("difference")
    if d is not None:
        lo, hi = d["ci"]
        lines.append(f"paired bootstrap, τ({d['a']}) - τ({d['b']}): {_f(d['kendall'])} "
                     f"[{_f(lo, 2)}, {_f(hi, 2)}], share of resamples <= 0: {_f(d['p'])}")
    nc = group.get("noise_ceiling")
    if nc is not None:
        lo, hi = nc["ci"]
        pairs = len(nc["pairs"])
        lines.append(f"noise ceiling, τ between seeds ({nc['n']} measured with each of "
                     f"{len(report['seeds'])} seeds, mean over {pairs} pair"
                     f"{'s' if pairs != 1 else ''}): {_f(nc['kendall'])} "
                     f"[{_f(lo, 2)}, {_f(hi, 2)}]")
    if "terciles" not in group:
        lines.append(f"no {report['cost']} costs in the run (the select stage has not run) and "
                     "no 'params' column: no terciles or partial τ")
    return lines
