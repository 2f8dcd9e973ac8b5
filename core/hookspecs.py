"""Every hook dnax declares. With the interfaces of :mod:`dnax.interfaces` (what a registered
class implements), this module is the whole plugin contract.

Implement any hook with ``@dnax.hookimpl`` in a module listed under the entry-point group
``dnax``. Who calls each:

* registration hooks, ``dnax_register_<kind>(register)``, are called by the registry
  (:mod:`dnax.registry`) once, when it is built: a plugin calls ``register(name, cls,
  config_cls=None)`` once per component it provides. The host checks the name, the class and
  the config class, refuses duplicates, and records which distribution registered what;
* ``dnax_register_commands(cli)`` is called by the command line (:mod:`dnax.cli.app`) when it
  needs its full list of commands: a plugin adds its own ``dnax`` commands;
* lifecycle hooks report a run as it goes (process 0 only under torchrun); observers (the CLI's
  progress display, loggers, trackers) implement any of them to follow a run without touching
  the core, and their return values are ignored. The runner (:mod:`dnax.runner`) fires
  ``dnax_pipeline_start`` / ``dnax_pipeline_end``, ``dnax_stage_start`` / ``dnax_stage_end``
  and ``dnax_selection_made``; :meth:`dnax.StageContext.save_ranking` fires
  ``dnax_block_ranked`` as the evaluator stores a block's ranking. Plugins fire the others
  from inside their stage:
  ``dnax_progress`` and ``dnax_log`` through :meth:`dnax.StageContext.progress` and
  :meth:`~dnax.StageContext.log`, and a block trainer fires ``dnax_block_trained`` itself
  (``ctx.hook.dnax_block_trained(...)``, as the built-in ``distill`` trainer does), so a
  third-party trainer that does not fire it leaves observers without per-block epochs;
* service hooks answer a question: ``dnax_load_model`` is called by :func:`dnax.load_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dnax")
hookimpl = pluggy.HookimplMarker("dnax")

#: ``register(name, cls, config_cls=None)``; ``config_cls`` defaults to ``cls.Config``.
Register = Callable[..., None]

# --- registration --------------------------------------------------------------------------


@hookspec
def dnax_register_data(register: Register) -> None:
    """Register data sources (subclasses of :class:`dnax.DataSource`)."""


@hookspec
def dnax_register_teachers(register: Register) -> None:
    """Register teachers (subclasses of :class:`dnax.Teacher`)."""


@hookspec
def dnax_register_spaces(register: Register) -> None:
    """Register search spaces (subclasses of :class:`dnax.SearchSpace`)."""


@hookspec
def dnax_register_trainers(register: Register) -> None:
    """Register block trainers (subclasses of :class:`dnax.BlockTrainer`)."""


@hookspec
def dnax_register_evaluators(register: Register) -> None:
    """Register evaluators that score every candidate (subclasses of :class:`dnax.Evaluator`)."""


@hookspec
def dnax_register_costs(register: Register) -> None:
    """Register cost models: params, FLOPs, latency (subclasses of :class:`dnax.CostModel`)."""


@hookspec
def dnax_register_selectors(register: Register) -> None:
    """Register selectors (subclasses of :class:`dnax.Selector`)."""


@hookspec
def dnax_register_retrainers(register: Register) -> None:
    """Register retrainers (subclasses of :class:`dnax.Retrainer`)."""


# --- the command line ----------------------------------------------------------------------


@hookspec
def dnax_register_commands(cli: Any) -> None:
    """Add commands to the ``dnax`` command line, as simonw/llm's ``register_commands(cli)``.

    ``cli`` is a ``typer.Typer`` app: decorate functions with ``@cli.command("my-command")``,
    or attach a group with ``cli.add_typer(sub_app, name="my-group")``; every command it ends
    up with becomes a command of ``dnax``. Called by the CLI, each plugin on its own, when a
    command that is not built in is asked for or the command list is shown (``dnax --help``):
    a plugin that raises, or adds a name that is taken, is reported on stderr as a broken plugin
    and its commands are left out; the other plugins' commands still load.
    """


# --- lifecycle -----------------------------------------------------------------------------


@hookspec
def dnax_pipeline_start(config: Any, run_dir: Path, plan: Sequence[Any]) -> None:
    """A pipeline run begins. ``config`` is the loaded :class:`dnax.PipelineConfig`; ``plan``
    holds one :class:`dnax.staging.StagePlan` per stage it will go through (``stage``,
    ``action``: reuse, run, resume or redo, and ``reason``). Fired by the runner once every
    check has passed, before any stage runs."""


@hookspec
def dnax_pipeline_end(config: Any, run_dir: Path, results: Mapping[str, Any]) -> None:
    """A pipeline run finished; ``results`` maps each stage name to its result value. Fired by
    the runner."""


@hookspec
def dnax_stage_start(stage: str, run_dir: Path) -> None:
    """A stage (teacher, train, rank, select, retrain) is about to run. Fired by the runner."""


@hookspec
def dnax_stage_end(stage: str, run_dir: Path, result: Any, skipped: bool, seconds: float) -> None:
    """A stage finished. ``skipped`` is true when its stored result was reused (resume). Fired
    by the runner."""


@hookspec
def dnax_progress(stage: str, task: str, completed: int, total: int | None,
                  info: Mapping[str, Any]) -> None:
    """A long step advanced: ``task`` (e.g. ``"epoch 3/20"``) is ``completed`` of ``total`` done.

    ``info`` carries figures to show beside it (per-block losses, throughput, ...). Fired by
    plugins, through ``ctx.progress(task, completed, total, **info)``.
    """


@hookspec
def dnax_log(stage: str, message: str) -> None:
    """A plugin has a line for the user. Plugins never print; observers decide how to show it.
    Fired by plugins, through ``ctx.log(message)``."""


@hookspec
def dnax_block_trained(block: Any, epoch: int, losses: Mapping[str, float], final: bool) -> None:
    """A block's supernet finished an epoch (``final`` on its last). ``block`` is a BlockSpec.

    Fired by the block trainer itself, ``ctx.hook.dnax_block_trained(block=..., epoch=...,
    losses=..., final=...)`` (the runner cannot: it sees the train stage only as a whole); the
    built-in ``distill`` trainer does, and a third-party trainer should.
    """


@hookspec
def dnax_block_ranked(block: Any, ranking: Any) -> None:
    """Every candidate of a block has been scored; ``ranking`` is a :class:`dnax.BlockRanking`.
    Fired once per block, as :meth:`dnax.StageContext.save_ranking` stores it (or by the runner
    after the rank stage, for rankings an evaluator stored with ``ctx.run_dir.save_ranking``)."""


@hookspec
def dnax_selection_made(selection: Any) -> None:
    """The selector chose a network; ``selection`` is a :class:`dnax.Selection`. Fired by the
    runner."""


# --- services ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dnax_load_model(path: Path) -> Any:
    """Load an exported network from ``path`` (a file or folder) as an eval-mode torch module;
    return None when this plugin does not know the format. First result wins. Called by
    :func:`dnax.load_model`."""
