"""The configuration reference (docs/config.md), generated from the plugins' config classes."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import attrs

from dnax.config import PipelineSettings

HEADER = """# Configuration reference

Generated from the config classes of the built-in plugins by `dnax config-reference`; do not
edit by hand (a test fails when this file is stale). A pipeline is a TOML file with one table per
interface: `plugin = "name"` plus that plugin's keys below. Relative paths resolve against the
TOML file's folder. Unknown keys are refused.
"""

_KIND_TITLES = {
    "data": "[data]: data sources", "teacher": "[teacher]: teachers",
    "space": "[space]: search spaces", "trainer": "[trainer]: block trainers",
    "evaluator": "[evaluator]: evaluators", "costs": "[[costs]]: cost models",
    "selector": "[selector]: selectors", "retrainer": "[retrainer]: retrainers",
}


def type_name(t: Any) -> str:
    """A short readable name for a config field's type."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| none" if type(None) in args else "")
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"[{', '.join(type_name(a) for a in args)}]"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {type_name(args[0])} → {type_name(args[1])}"
    if isinstance(t, type) and issubclass(t, Path):
        return "path"
    if attrs.has(t):
        return f"table ({t.__name__})"
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return " \\| ".join(repr(m.value) for m in t)
    return getattr(t, "__name__", str(t))


def _default(a: attrs.Attribute) -> str:
    d = a.default
    if d is attrs.NOTHING:
        return "required"
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        d = d.factory()
    if attrs.has(type(d)):
        return "see below"
    if d is None:
        return "none"
    if isinstance(d, bool):
        return str(d).lower()
    if isinstance(d, str):
        return f'"{d}"'
    if isinstance(d, tuple):
        d = list(d)
    return f"`{d}`".replace("|", "\\|")


def config_table(cls: type) -> list[str]:
    attrs.resolve_types(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for a in attrs.fields(cls):
        lines.append(f"| `{a.name}` | {type_name(a.type)} | {_default(a)} | "
                     f"{a.metadata.get('help', '')} |")
        inner = [x for x in (a.type, *typing.get_args(a.type)) if attrs.has(x)]
        nested += [x for x in inner if x not in nested]
    for sub in nested:
        lines += ["", f"`{sub.__name__}`: {(sub.__doc__ or '').strip().splitlines()[0]}", "",
                  *config_table(sub)]
    return lines


def config_reference(registry: Any) -> str:
    """Markdown for every built-in plugin's keys (third-party plugins are left out)."""
    out = [HEADER, "## [pipeline]", "", "Settings every stage shares.", "",
           *config_table(PipelineSettings), ""]
    for kind, title in _KIND_TITLES.items():
        entries = [e for e in registry.tables[kind].values() if e.origin.distribution == "dnax"]
        if not entries:
            continue
        out += [f"## {title}", ""]
        for e in sorted(entries, key=lambda e: e.name):
            out += [f"### `plugin = \"{e.name}\"`", "", e.doc, "", *config_table(e.config_cls),
                    ""]
    return "\n".join(out).rstrip() + "\n"
