"""Every hook dnax calls. This module is the whole plugin contract.

Two families:

* registration hooks, ``dnax_register_<kind>(register)``: a plugin calls
  ``register(name, cls, config_cls=None)`` once per component it provides. The host checks the
  name, the class and the config class, refuses duplicates, and records which distribution
  registered what;
* lifecycle hooks: observers (the CLI's progress display, loggers, trackers) implement any of them
  to follow a run without touching the core. Their return values are ignored.

Implement them with ``@dnax.hookimpl`` in a module listed under the entry-point group ``dnax``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


# --- lifecycle -----------------------------------------------------------------------------


@hookspec
def dnax_pipeline_start(config: Any, run_dir: Path) -> None:
    """A pipeline run begins. ``config`` is the loaded :class:`dnax.PipelineConfig`."""


@hookspec
def dnax_pipeline_end(config: Any, run_dir: Path, results: Mapping[str, Any]) -> None:
    """A pipeline run finished; ``results`` maps each stage name to its result value."""


@hookspec
def dnax_stage_start(stage: str, run_dir: Path) -> None:
    """A stage (teacher, train, rank, select, retrain) is about to run."""


@hookspec
def dnax_stage_end(stage: str, run_dir: Path, result: Any, skipped: bool, seconds: float) -> None:
    """A stage finished. ``skipped`` is true when its stored result was reused (resume)."""


@hookspec
def dnax_progress(stage: str, task: str, completed: int, total: int | None,
                  info: Mapping[str, Any]) -> None:
    """A long step advanced: ``task`` (e.g. ``"epoch 3/20"``) is ``completed`` of ``total`` done.

    ``info`` carries figures to show beside it (per-block losses, throughput, ...).
    """


@hookspec
def dnax_log(stage: str, message: str) -> None:
    """A plugin has a line for the user. Plugins never print; observers decide how to show it."""


@hookspec
def dnax_block_trained(block: Any, epoch: int, losses: Mapping[str, float], final: bool) -> None:
    """A block's supernet finished an epoch (``final`` on its last). ``block`` is a BlockSpec."""


@hookspec
def dnax_block_ranked(block: Any, ranking: Any) -> None:
    """Every candidate of a block has been scored; ``ranking`` is a :class:`dnax.BlockRanking`."""


@hookspec
def dnax_selection_made(selection: Any) -> None:
    """The selector chose a network; ``selection`` is a :class:`dnax.Selection`."""


# --- services ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dnax_load_model(path: Path) -> Any:
    """Load an exported network from ``path`` (a file or folder) as an eval-mode torch module;
    return None when this plugin does not know the format. First result wins."""
