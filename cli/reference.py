"""The configuration reference (docs/config.md), generated from the plugins' config classes."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import attrs

from dnax.config import PipelineSettings
from dnax.interfaces import PLUGIN_KINDS

HEADER = """# Configuration reference

Generated from the config classes of the built-in plugins by `dnax config-reference`; do not
edit by hand (a test fails when this file is stale). A pipeline is a TOML file with one table per
interface: `plugin = "name"` plus that plugin's keys below. Relative paths resolve against the
TOML file's folder. Unknown keys are refused.
"""

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
    for kind, title in ((k.name, f"{k.header}: {k.title}") for k in PLUGIN_KINDS):
        entries = [e for e in registry.tables[kind].values() if e.origin.distribution == "dnax"]
        if not entries:
            continue
        out += [f"## {title}", ""]
        for e in sorted(entries, key=lambda e: e.name):
            out += [f"### `plugin = \"{e.name}\"`", "", e.doc, "", *config_table(e.config_cls),
                    ""]
    return "\n".join(out).rstrip() + "\n"


HOOKS_HEADER = """# Hook reference

Generated from `core/hookspecs.py` by `dnax hooks-reference`; do not edit by hand (a test fails
when this file is stale, and another when a hook is never called). Implement any of these with
`@dnax.hookimpl` in a module named by your package's `dnax` entry point (see plugins.md).
"""

#: the hooks the CLI calls (the others are the registry's, the runner's and the plugins')
_CLI_HOOKS = ("dnax_register_commands",)
_HOOK_GROUPS = (
    ("Registration", "dnax_register_", "Each is called once when the registry is built; call "
     "`register(name, cls, config_cls=None)` once per component."),
    ("Command line", "dnax_register_commands", "Called by the `dnax` command line, each "
     "plugin on its own; a failing plugin is reported, never fatal."),
    ("Lifecycle", "", "Fired on process 0 while a pipeline runs, by the runner or by the plugins "
     "themselves (each hook says which); return values are ignored."),
    ("Services", "dnax_load_model", "`firstresult`: the first plugin that returns something "
     "other than None answers."),
)


def hook_names() -> list[str]:
    """Every hook in dnax's hookspec module, in the order it declares them."""
    from dnax import hookspecs

    return [n for n in vars(hookspecs) if n.startswith("dnax_")
            and hasattr(getattr(hookspecs, n), "dnax_spec")]


def hooks_reference() -> str:
    """docs/hooks.md: each hook's signature and docstring, grouped by family."""
    import inspect

    from dnax import hookspecs

    names = hook_names()
    groups: dict[str, list[str]] = {title: [] for title, _, _ in _HOOK_GROUPS}
    for name in names:
        if name in _CLI_HOOKS:
            groups["Command line"].append(name)
        elif name.startswith("dnax_register_"):
            groups["Registration"].append(name)
        elif getattr(hookspecs, name).dnax_spec.get("firstresult"):
            groups["Services"].append(name)
        else:
            groups["Lifecycle"].append(name)
    lines = [HOOKS_HEADER]
    for title, _, intro in _HOOK_GROUPS:
        lines += [f"## {title}", "", intro, ""]
        for name in groups[title]:
            fn = getattr(hookspecs, name)
            sig = str(inspect.signature(fn)).replace("'", "")
            lines += [f"### `{name}{sig}`", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"
