"""The ``dnax`` commands. Each builds the registry, calls the kernel and renders what comes back.

Expected mistakes (:class:`dnax.UserError`) print one line per problem on stderr and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import numpy as np
import typer
from typer.core import TyperGroup

import dnax
from dnax.cli import (
    bench_data,  # noqa: F401  (registers `dnax bench data`)
    render,
)
from dnax.cli.bench import bench_app
from dnax.cli.common import err, out, print_json, user_errors
from dnax.registry import get_registry


class DnaxGroup(TyperGroup):
    """The root ``dnax`` command: the built-in commands, then those plugins add through the
    ``dnax_register_commands`` hook. Plugins are loaded only when a name that is not built in is
    asked for or the list is shown (``--help``), so built-in commands never wait for them."""

    _plugins_loaded = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and not self._plugins_loaded:
            self.load_plugin_commands()
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugin_commands()
        return super().list_commands(ctx)

    def load_plugin_commands(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            add_plugin_commands(self, get_registry())


def add_plugin_commands(group: click.Group, registry: Any) -> None:
    """Call every plugin's ``dnax_register_commands`` with a typer app of its own and add the
    commands it ends up with to ``group``. A plugin that raises or takes a name already in
    ``group`` is reported (``registry.failures`` and a warning on stderr) and none of its
    commands are added; the others still are."""
    for name, call in registry.implementations("dnax_register_commands"):
        staging = typer.Typer()
        try:
            call(cli=staging)
            commands = (typer.main.get_group(staging).commands
                        if staging.registered_commands or staging.registered_groups else {})
            taken = sorted(set(commands) & set(group.commands))
            if taken:
                raise dnax.PluginError(f"command {', '.join(map(repr, taken))} is already a "
                                       "dnax command")
        except Exception as e:
            err.print(f"warning: {registry.report(name, e)}", markup=False)
            continue
        for cmd_name, cmd in commands.items():
            group.add_command(cmd, cmd_name)


app = typer.Typer(cls=DnaxGroup, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  add_completion=False, help="Block-wisely supervised NAS with knowledge "
                  "distillation (DNA).")
app.add_typer(bench_app, name="bench")

def _version(value: bool) -> None:
    if value:
        out.print(f"dnax {dnax.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False
          ) -> None:
    """dnax: search a network block by block against a teacher, then retrain it."""


PipelineArg = Annotated[Path, typer.Argument(help="Pipeline TOML file.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command()
@user_errors
def run(
    pipeline: PipelineArg,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory [default: runs/<name>].")
                       ] = None,
    force: Annotated[str | None, typer.Option(help="Re-run from this stage on.")] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    rerun: Annotated[bool, typer.Option(
        "--rerun", help="Redo every finished stage the config changed (without it, a changed "
        "finished stage stops the run).")] = False,
) -> None:
    """Run a pipeline, resuming whatever an earlier run of it finished.

    Every check that needs no training comes first; then the plan (each stage reused, run,
    resumed or redone, and why) is printed before anything is written."""
    from dnax.cli.observer import RichObserver

    registry = get_registry()
    _warn_failures(registry)
    config = dnax.load_pipeline(pipeline, registry)
    dist = dnax.DistInfo.from_env()
    observer = RichObserver(out) if dist.is_main else None
    if observer is not None:
        registry.pm.register(observer, name="dnax-cli-observer")
    try:
        result = dnax.run_pipeline(config, run_dir, registry=registry, force=force,
                                   until=until, rerun=rerun)
    finally:
        if observer is not None:
            registry.pm.unregister(observer)
    if dist.is_main:
        if result.selection is not None:
            out.print(render.selection_table(result.selection))
        if result.report:
            out.print(render.report_table(result.report))


@app.command()
@user_errors
def validate(pipeline: PipelineArg, as_json: JsonOpt = False) -> None:
    """Check a pipeline (everything that needs no training: models, data folders, blocks,
    budgets) and print its plan: the teacher's blocks and the size of the space."""
    registry = get_registry()
    config = dnax.load_pipeline(pipeline, registry)
    plan = dnax.plan(config, registry)
    if as_json:
        print_json({"valid": True, "stages": [s.name for s in
                                              dnax.runner.configured_stages(config)],
                     "plan": plan.to_json()})
    else:
        out.print(render.plan_table(plan))
        out.print(f"[green]valid[/]: {pipeline}")


@app.command()
def plugins(as_json: JsonOpt = False) -> None:
    """List every registered plugin per kind, with the distribution it came from."""
    registry = get_registry()
    data = registry.to_json()
    if as_json:
        print_json(data)
        return
    out.print(render.plugins_table(data))
    _warn_failures(registry)


def _warn_failures(registry: Any) -> None:
    for f in registry.failures:
        err.print(f"warning: {f}", markup=False)


@app.command()
@user_errors
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    block: Annotated[int | None, typer.Option(help="Only this block's ranking.")] = None,
    top: Annotated[int, typer.Option(help="Candidates shown per block.")] = 10,
    png: Annotated[Path | None, typer.Option(
        help="Where to draw the Pareto front [default: RUN_DIR/selection/pareto.png].")] = None,
    no_png: Annotated[bool, typer.Option("--no-png", help="Do not draw the Pareto front.")
                      ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: stages, block rankings, selected network, report and Pareto-front PNG."""
    from dnax.runner import STAGE_NAMES

    run_ = dnax.load_run(run_dir)
    rankings = [run_.ranking(block)] if block is not None else run_.rankings()
    key = run_.results["rank"].key if "rank" in run_.results else "nmae"
    best = (run_.run_dir.read_json("selection/top.json", kind="top-k")
           if run_.selection is not None and run_.run_dir.exists("selection/top.json") else None)
    picture = None
    if not no_png and run_.selection is not None:
        from dnax.cli.plot import pareto_png

        picture = pareto_png(run_, png or run_.run_dir.path("selection", "pareto.png"))
    if as_json:
        print_json({
            "run_dir": str(run_.run_dir.root),
            "finished": [s for s in STAGE_NAMES if s in run_.results],
            "rankings": [_ranking_json(r, key, top) for r in rankings],
            "fixed_costs": run_.fixed_costs,
            "selection": run_.selection,
            "best_networks": best,
            "pareto_png": picture,
            "report": run_.report,
        })
        return
    out.print(render.stages_table(run_, STAGE_NAMES))
    for r in rankings:
        out.print(render.ranking_table(r, key, top))
    if run_.selection is not None:
        out.print(render.selection_table(run_.selection))
    if best is not None and block is None:
        out.print(render.top_table(best, rankings))
    if picture is not None:
        out.print(f"Pareto front: {picture}", markup=False)
    if run_.report:
        out.print(render.report_table(run_.report))


def _ranking_json(r: dnax.BlockRanking, key: str, top: int) -> dict[str, Any]:
    order = np.argsort(np.asarray(r.scores[key]), kind="stable")[:top]
    return {
        "block": r.block,
        "num_candidates": len(r.candidates),
        "key": key,
        "top": [{"rank": k + 1, "index": int(i), "cell": r.candidates[i].cell,
                 "ops": list(r.candidates[i].ops), "arch": list(r.candidates[i].arch),
                 "scores": {n: float(v[i]) for n, v in r.scores.items()},
                 "costs": {n: float(v[i]) for n, v in r.costs.items()}}
                for k, i in enumerate(order)],
    }


def _profile() -> None:
    from dnax.cli.profile import profile_command

    app.command("profile")(user_errors(profile_command))


_profile()


def _correlate() -> None:
    from dnax.cli.correlate import correlate_command

    app.command("correlate")(user_errors(correlate_command))


_correlate()


@app.command("config-reference", hidden=True)
def config_reference_cmd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")
                      ] = None,
) -> None:
    """Print the configuration reference (docs/config.md) from the plugins' config classes."""
    from dnax.cli.reference import config_reference
    from dnax.registry import Registry
    from dnax.rundir import atomic_write_text

    text = config_reference(Registry.create(entry_points=False))
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(output, text)


@app.command("hooks-reference", hidden=True)
def hooks_reference_cmd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")
                      ] = None,
) -> None:
    """Print the hook reference (docs/hooks.md) from dnax's hookspecs."""
    from dnax.cli.reference import hooks_reference
    from dnax.rundir import atomic_write_text

    text = hooks_reference()
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(output, text)
