"""Error types. A :class:`UserError` is an expected mistake: the CLI prints it and exits 2."""

from __future__ import annotations

from collections.abc import Iterable


class DnaxError(Exception):
    """Base of every error dnax raises on purpose."""


class UserError(DnaxError):
    """Bad input from the user: config, plugin, data folder, checkpoint.

    Each problem is one line that names where it is (``$.trainer.epochs: ...``, a file path, ...).
    """

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(UserError):
    """The pipeline TOML is malformed or does not fit the plugins' config classes."""


class PluginError(UserError):
    """A plugin is unknown, registered twice, or does not implement its interface."""


class DataError(UserError):
    """A data source cannot deliver what the pipeline needs (missing folder, bad image, ...)."""


class ArtifactError(UserError):
    """An artefact in the run directory or a user file is truncated, of another format version,
    or does not match the pipeline it is loaded for."""


class DivergenceError(DnaxError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


class NoFeasibleNetworkError(UserError):
    """No network of the search space fits the budgets."""
