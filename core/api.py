"""The library API: what the CLI does, callable from research code."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import define, field

from .config import PipelineConfig, load_config
from .context import DistInfo, Plugins, QuietHooks, StageContext
from .costing import load_costs
from .errors import ArtifactError
from .preflight import check_pipeline
from .rundir import RunDir
from .runner import STAGE_NAMES, instantiate, load_result, resolve_device
from .runner import run as _run
from .types import BlockRanking, Plan, Selection


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from dnax.registry import get_registry

    return get_registry()


def load_pipeline(source: str | os.PathLike | Mapping[str, Any] | PipelineConfig,
                  registry: Any = None) -> PipelineConfig:
    """Load and validate a pipeline from a TOML path or a dict (paths relative to the cwd)."""
    if isinstance(source, PipelineConfig):
        return source
    return load_config(source if isinstance(source, Mapping) else Path(source),
                       _registry(registry))


def build_plugins(source: Any, registry: Any = None) -> Plugins:
    """Every plugin of a pipeline (a TOML path, a dict or a loaded config), built once: hand
    them to :func:`stage_context` to call stages many times without rebuilding them."""
    reg = _registry(registry)
    return instantiate(load_pipeline(source, reg), reg)


def plan(source: Any, registry: Any = None) -> Plan:
    """The search plan of a pipeline (per block the teacher's spec and its candidate count),
    once every check that needs no training has passed (as ``dnax validate``)."""
    config = load_pipeline(source, registry)
    return check_pipeline(config, instantiate(config, _registry(registry)))


def stage_context(source: Any, run_dir: str | os.PathLike, stage: str = "retrain", *,
                  registry: Any = None, hook: Any = None, plugins: Plugins | None = None
                  ) -> StageContext:
    """A stage's context outside the runner, to call one plugin from research code.

    The pipeline's plugins are built from ``source``; the results of stages already finished in
    ``run_dir`` are loaded (a teacher's weights, rankings, ...); the device is resolved as
    ``dnax run`` would. Hooks are silent unless ``hook`` (e.g. ``registry.hook``) is given::

        ctx = dnax.stage_context("p.toml", "runs/p", "retrain")
        result = ctx.plugins.retrainer.retrain(ctx, my_selection)

    ``plugins`` (from :func:`build_plugins`) are used as given instead of being built again.
    """
    reg = _registry(registry)
    config = load_pipeline(source, reg)
    rd = RunDir(run_dir)
    results = load_run(rd.root).results if rd.exists("config.toml") else {}
    device = resolve_device(config.pipeline.device, DistInfo())
    if plugins is None:
        plugins = instantiate(config, reg)
    return StageContext(stage, config, plugins, rd,
                        QuietHooks() if hook is None else hook, device, DistInfo(), results)


def default_run_dir(config: PipelineConfig) -> Path:
    return Path("runs") / config.pipeline.name


def run_pipeline(source: Any, run_dir: str | os.PathLike | None = None, *,
                 registry: Any = None, force: str | None = None, until: str | None = None,
                 rerun: bool = False) -> Run:
    """Run (or resume) a pipeline, as ``dnax run`` does, and return the finished :class:`Run`.

    A finished stage whose config changed is redone only with ``force`` (that stage or an
    earlier one) or ``rerun``; otherwise a ConfigError names the changed keys."""
    reg = _registry(registry)
    config = load_pipeline(source, reg)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    _run(config, reg, run_dir, force=force, until=until, rerun=rerun)
    return load_run(run_dir)


@define
class Run:
    """A run directory read back: resolved config, each finished stage's result, report."""

    run_dir: RunDir
    config: dict[str, Any]
    results: dict[str, Any] = field(factory=dict)
    report: dict[str, Any] | None = None

    @property
    def selection(self) -> Selection | None:
        return self.results.get("select")

    def ranking(self, block: int) -> BlockRanking:
        """Every candidate of ``block`` with its scores and costs."""
        rank = self.results.get("rank")
        if rank is None:
            raise ArtifactError(f"{self.run_dir.root}: the rank stage has not finished")
        for ref in rank.blocks:
            if ref.block == block:
                return self._with_costs(self.run_dir.load_ranking(ref))
        raise ArtifactError(f"{self.run_dir.root}: no ranking for block {block} "
                            f"(blocks: {[r.block for r in rank.blocks]})")

    def rankings(self) -> list[BlockRanking]:
        """Every block's ranking, with the select stage's costs once it has run."""
        rank = self.results.get("rank")
        if rank is None:
            return []
        return [self._with_costs(self.run_dir.load_ranking(r)) for r in rank.blocks]

    @property
    def fixed_costs(self) -> dict[str, float]:
        """Stem, head and unsearched stages' cost per metric (empty before the select stage)."""
        return self._costs()[1]

    def _costs(self) -> tuple[dict[str, Any], dict[str, float], dict[str, list[int]]]:
        if "select" not in self.results:
            return {}, {}, {}
        return load_costs(self.run_dir)

    def _with_costs(self, r: BlockRanking) -> BlockRanking:
        arrays, _, widths = self._costs()
        prefix = f"block{r.block}."
        extra = {k.removeprefix(prefix): v.numpy() for k, v in arrays.items()
                 if k.startswith(prefix)}
        if not extra:
            return r
        return BlockRanking(r.block, r.candidates, r.scores, {**r.costs, **extra},
                            cell_widths=tuple(widths.get(str(r.block), ())))


def load_model(path: str | os.PathLike, registry: Any = None) -> Any:
    """Load a network exported by a retrainer (e.g. ``RUN_DIR/model``) as an eval-mode module.

    Asks every plugin's ``dnax_load_model`` hook; the first that knows the format answers.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or folder")
    model = _registry(registry).hook.dnax_load_model(path=path)
    if model is None:
        raise ArtifactError(f"{path}: no installed plugin can load this model")
    return model


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory written by :func:`run_pipeline` or ``dnax run``."""
    rd = RunDir(run_dir)
    cfg_path = rd.path("config.toml")
    if not cfg_path.exists():
        raise ArtifactError(f"{rd.root}: not a dnax run directory (no config.toml)")
    try:
        config = tomllib.loads(cfg_path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ArtifactError(f"{cfg_path}: invalid TOML ({e})") from None
    results = {}
    for name in STAGE_NAMES:
        result = load_result(rd, name)
        if result is not None:
            results[name] = result
    report = rd.read_json("report.json", kind="report") if rd.exists("report.json") else None
    return Run(rd, config, results, report)
