"""Pipelines in TOML: one table per interface, ``plugin = "name"`` plus that plugin's arguments.

Each plugin's arguments are validated by its attrs config class through a strict cattrs converter
(unknown keys refused, no silent coercion, paths resolved relative to the TOML file). Every
problem found becomes one line ``$.table.key: what is wrong``; all of them are reported at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from attrs import field, frozen

from .errors import ConfigError, PluginError
from .interfaces import KIND, PLUGIN_KINDS
from .structure import (
    check_order,
    converter,
    drop_none,
    key_path,
    show,
    structure,
    suggest,
    unstructurer,
)

# --- validators plugins use in their config classes ------------------------------------------

def positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a number (or every number of a sequence) must be > 0."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if v is not None and not v > 0:
            raise ValueError(f"must be > 0, got {show(v)}")


def non_negative(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a number (or every number of a sequence) must be >= 0."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if v is not None and not v >= 0:  # NaN fails too
            raise ValueError(f"must be >= 0, got {show(v)}")


def existing_path(_inst: Any, attribute: attrs.Attribute, value: Path | None) -> None:
    """attrs validator: the path (if given) must exist."""
    if value is not None and not Path(value).exists():
        raise ValueError(f"no such file or folder: {value}")


# --- the pipeline's own settings -------------------------------------------------------------

@frozen
class PipelineSettings:
    """The ``[pipeline]`` table: settings every stage shares."""

    name: str = field(default="dnax", metadata={"help": "name shown in reports"})
    seed: int = field(default=0, validator=non_negative,
                      metadata={"help": "seed of every random choice (data order, paths, init)"})
    device: str = field(default="auto",
                        metadata={"help": "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'"})
    resolution: int = field(default=224, validator=positive,
                            metadata={"help": "image side in pixels the teacher sees"})
    deterministic: bool = field(default=False, metadata={
        "help": "deterministic torch algorithms (slower; for reproducible runs)"})
    threads: int = field(default=0, validator=non_negative, metadata={
        "help": "CPU threads torch uses (0: torch's default, one per core)"})


@frozen
class Section:
    """One pipeline table: the plugin's name and its validated config instance."""

    kind: str
    plugin: str
    config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, **drop_none(unstructurer.unstructure(self.config))}


@frozen
class PipelineConfig:
    """A loaded, validated pipeline."""

    pipeline: PipelineSettings
    sections: Mapping[str, Section]
    costs: tuple[Section, ...] = ()
    source: Path | None = None

    def section(self, kind: str) -> Section | None:
        return self.sections.get(kind)

    def to_dict(self) -> dict[str, Any]:
        """The resolved pipeline (defaults filled in, paths absolute), as TOML would hold it."""
        out: dict[str, Any] = {"pipeline": unstructurer.unstructure(self.pipeline)}
        for kind in PLUGIN_KINDS:
            if kind.many:
                if self.costs:
                    out[kind.name] = [c.to_dict() for c in self.costs]
            elif kind.name in self.sections:
                out[kind.name] = self.sections[kind.name].to_dict()
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


# --- loading ----------------------------------------------------------------------------------

def load_config(source: str | Path | Mapping[str, Any], registry: Any,
                base_dir: str | Path | None = None,
                tables: Collection[str] | None = None) -> PipelineConfig:
    """Load a pipeline from a TOML path or a dict; raise :class:`ConfigError` with every problem.

    ``registry`` resolves plugin names (see :func:`dnax.registry.get_registry`). Relative paths
    resolve against the TOML file's folder (or ``base_dir``, or the working directory). With
    ``tables``, only those tables are read; the others are ignored, not checked.
    """
    path: Path | None = None
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such pipeline file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
        base_dir = base_dir or path.parent
    if tables is not None:
        raw = {k: v for k, v in raw.items() if k in tables}
    base = Path(base_dir or Path.cwd()).resolve()
    problems: list[str] = []

    known = (*KIND, "pipeline")
    for key in raw:
        if key not in known:
            problems.append(f"$.{key_path(key)}: unknown table{suggest(key, known)}")
    for kind in PLUGIN_KINDS:
        if kind.required and kind.name not in raw:
            problems.append(f"$.{kind.name}: required table missing")

    conv = converter(base)
    settings = structure(conv, raw.get("pipeline", {}), PipelineSettings, "$.pipeline", problems)
    sections: dict[str, Section] = {}
    costs: list[Section] = []
    for kind in PLUGIN_KINDS:
        name = kind.name
        if name not in raw:
            continue
        if kind.many:
            if not isinstance(raw[name], list):
                problems.append(f"$.{name}: expected an array of tables ({kind.header}), got "
                                f"{show(raw[name])}")
                continue
            for i, table in enumerate(raw[name]):
                sec = _section(conv, registry, name, table, f"$.{name}[{i}]", problems)
                if sec:
                    costs.append(sec)
        else:
            sec = _section(conv, registry, name, raw[name], f"$.{name}", problems)
            if sec:
                sections[name] = sec

    check_order(raw, problems)
    if problems:
        raise ConfigError(problems)
    config = PipelineConfig(settings, sections, tuple(costs), path.resolve() if path else None)
    for sec in [*sections.values(), *costs]:
        cls = registry.get(sec.kind, sec.plugin).cls
        problems += [f"$.{sec.kind}: {msg}" for msg in cls.check(sec.config, config, registry)]
    if problems:
        raise ConfigError(problems)
    return config


def _section(conv: cattrs.Converter, registry: Any, kind: str, table: Any, path: str,
             problems: list[str]) -> Section | None:
    if not isinstance(table, Mapping):
        problems.append(f"{path}: expected a table, got {show(table)}")
        return None
    args = dict(table)
    name = args.pop("plugin", None)
    if name is None:
        problems.append(f"{path}.plugin: required key missing (one of: "
                        f"{', '.join(registry.names(kind)) or 'none registered'})")
        return None
    if not isinstance(name, str):
        problems.append(f"{path}.plugin: expected str, got {show(name)}")
        return None
    try:
        entry = registry.get(kind, name)
    except PluginError as e:
        problems.append(f"{path}.plugin: {e}")
        return None
    config = structure(conv, args, entry.config_cls, path, problems)
    return None if config is None else Section(kind, name, config)
