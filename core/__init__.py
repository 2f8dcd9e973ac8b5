"""dnax: block-wisely supervised neural architecture search with knowledge distillation (DNA).

The kernel: abstract interfaces, the values that flow between stages, the pluggy hookspecs, the
pipeline runner, the run directory and the config loader. Plugins live in :mod:`dnax.plugins`
(built-in) or in any distribution that lists a module under the entry-point group ``dnax``.
"""

from importlib.metadata import PackageNotFoundError, version

from .api import (
    Run,
    build_plugins,
    load_model,
    load_pipeline,
    load_run,
    plan,
    run_pipeline,
    stage_context,
)
from .config import PipelineConfig, PipelineSettings, existing_path, non_negative, positive
from .context import DistInfo, Plugins, StageContext
from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DivergenceError,
    DnaxError,
    NoFeasibleNetworkError,
    PluginError,
    UserError,
)
from .hookspecs import hookimpl, hookspec
from .interfaces import (
    BlockTrainer,
    CostModel,
    DataSource,
    Evaluator,
    NetworkTimer,
    Plugin,
    Retrainer,
    SearchSpace,
    Selector,
    Split,
    Supernet,
    SupernetCell,
    Teacher,
    supernet_shape,
)
from .loading import Workers, batches, workers_field
from .rundir import FORMAT_VERSION, RunDir, atomic_write, load_safetensors
from .types import (
    BlockCheckpoint,
    BlockPlan,
    BlockRanking,
    BlockSpec,
    Candidate,
    CellSpec,
    DataConfig,
    Plan,
    RankingRef,
    RankResult,
    RetrainResult,
    Selection,
    TeacherResult,
    TrainResult,
)

try:
    __version__ = version("dnax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "BlockCheckpoint",
    "BlockPlan",
    "BlockRanking",
    "BlockSpec",
    "BlockTrainer",
    "Candidate",
    "CellSpec",
    "ConfigError",
    "CostModel",
    "DataConfig",
    "DataError",
    "DataSource",
    "DistInfo",
    "DivergenceError",
    "DnaxError",
    "Evaluator",
    "NetworkTimer",
    "NoFeasibleNetworkError",
    "PipelineConfig",
    "PipelineSettings",
    "Plan",
    "Plugin",
    "PluginError",
    "Plugins",
    "RankResult",
    "RankingRef",
    "RetrainResult",
    "Retrainer",
    "Run",
    "RunDir",
    "SearchSpace",
    "Selection",
    "Selector",
    "Split",
    "StageContext",
    "Supernet",
    "SupernetCell",
    "Teacher",
    "TeacherResult",
    "TrainResult",
    "UserError",
    "Workers",
    "atomic_write",
    "batches",
    "build_plugins",
    "existing_path",
    "hookimpl",
    "hookspec",
    "load_model",
    "load_pipeline",
    "load_run",
    "load_safetensors",
    "non_negative",
    "plan",
    "positive",
    "run_pipeline",
    "stage_context",
    "supernet_shape",
    "workers_field",
]
