"""How a TOML table becomes a plugin's attrs config: a strict cattrs converter, and every problem
it finds as one line ``$.table.key: what is wrong`` (unknown keys with a suggestion, wrong types
without silent coercion, validators' messages, paths resolved relative to the TOML file).
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.cols import (
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from .interfaces import PLUGIN_KINDS
from .loading import Workers


def structure(conv: cattrs.Converter, data: Any, cls: type, path: str,
               problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{path}: expected a table, got {show(data)}")
        return None
    try:
        with attrs.validators.disabled():
            inst = conv.structure(dict(data), cls)
    except Exception as e:  # cattrs raises exception groups; each leaf is one problem
        problems.extend(_problems(e, path))
        # the parts that did convert are still checked, so that every mistake shows at once
        problems.extend(_checks_beside(conv, data, cls, path, _failed_keys(e)))
        return None
    found = list(_validate(inst, path))
    problems.extend(found)
    return None if found else inst


def _checks_beside(conv: cattrs.Converter, data: Mapping[str, Any], cls: type, path: str,
                   failed: set[str]) -> Iterator[str]:
    """The checks (attrs validators) of a table whose ``failed`` keys did not convert: every
    other key, and the elements of failed lists and tables of config classes that did."""
    try:
        with attrs.validators.disabled():
            rest = conv.structure({k: v for k, v in data.items() if k not in failed}, cls)
    except Exception:
        rest = None
    if rest is not None:
        yield from _validate(rest, path, skip=failed)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return
    for key in sorted(failed):
        if key in data and key in hints:
            yield from _nested_checks(conv, data[key], hints[key], f"{path}.{key}")


def _nested_checks(conv: cattrs.Converter, value: Any, tp: Any, path: str) -> Iterator[str]:
    """Checks inside a value of type ``tp`` that failed to convert as a whole."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp, args = args[0], list(typing.get_args(args[0]))
    if attrs.has(tp) and isinstance(value, Mapping):
        try:
            with attrs.validators.disabled():
                inst = conv.structure(dict(value), tp)
        except Exception as e:
            yield from _checks_beside(conv, value, tp, path, _failed_keys(e))
        else:
            yield from _validate(inst, path)
    elif typing.get_origin(tp) in (list, tuple) and args and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _nested_checks(conv, v, args[0], f"{path}[{i}]")


def _failed_keys(exc: BaseException) -> set[str]:
    """The top-level keys of a table that failed to convert (wrong type, unknown key)."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        keys = {note.name for _e, note in with_notes}
        for e in without:
            keys |= _failed_keys(e)
        return keys
    if isinstance(exc, ForbiddenExtraKeysError):
        return set(exc.extra_fields)
    return set()


def _validate(inst: Any, path: str, skip: Collection[str] = ()) -> Iterator[str]:
    """Run attrs validators field by field (the fields named in ``skip`` left out) so that each
    failure names its own path."""
    for a in attrs.fields(type(inst)):
        if a.name in skip:
            continue
        value = getattr(inst, a.name)
        if a.validator is not None:
            try:
                a.validator(inst, a, value)
            except (ValueError, TypeError) as e:
                yield f"{path}.{a.name}: {e}"
        if attrs.has(type(value)):
            yield from _validate(value, f"{path}.{a.name}")
        elif isinstance(value, tuple):
            for i, v in enumerate(value):
                if attrs.has(type(v)):
                    yield from _validate(v, f"{path}.{a.name}[{i}]")


def _problems(exc: BaseException, path: str) -> Iterator[str]:
    """One line per leaf of a failed conversion: :func:`cattrs.transform_error` walks cattrs'
    exception groups and builds each leaf's ``$.path``; :func:`_describe` words the leaf.

    transform_error hands the formatter a leaf without its path and returns ``"<text> @ <path>"``;
    the text given back is the leaf's index among ``leaves``, so that splitting at the first
    ``" @ "`` is exact whatever the path and the values hold."""
    leaves: list[BaseException] = []

    def token(e: BaseException, _type: Any) -> str:
        leaves.append(e)
        return str(len(leaves) - 1)

    for line in cattrs.transform_error(exc, path, format_exception=token):
        index, _, where = line.partition(" @ ")
        yield from _describe(leaves[int(index)], where)


def _describe(exc: BaseException, path: str) -> Iterator[str]:
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            yield f"{path}.{key_path(key)}: unknown key{suggest(key, known)}"
    elif isinstance(exc, KeyError):
        yield f"{path}: required key missing"
    else:
        yield f"{path}: {str(exc).strip() or type(exc).__name__}"


def check_order(raw: Mapping[str, Any], problems: list[str]) -> None:
    """Each stage needs the one before it: a selector needs an evaluator, and so on (a missing
    required table is reported once, as missing)."""
    staged = [k for k in PLUGIN_KINDS if k.stage is not None]
    for before, kind in itertools.pairwise(staged):
        if kind.name in raw and before.name not in raw and not before.required:
            problems.append(f"$.{before.name}: required table missing (needed by "
                            f"{kind.header})")


# --- the strict converter ---------------------------------------------------------------------

class _TypeProblem(ValueError):
    pass


def show(v: Any) -> str:
    try:
        return json.dumps(v)
    except TypeError:
        return repr(v)


def key_path(key: str) -> str:
    """A TOML key as it can be printed on one line: quoted when it is not a bare key."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _strict(tname: str, ok: type | tuple[type, ...], cast: Any = None) -> Any:
    def hook(v: Any, _t: Any) -> Any:
        if isinstance(v, bool) and bool not in (ok if isinstance(ok, tuple) else (ok,)):
            raise _TypeProblem(f"expected {tname}, got {show(v)}")
        if not isinstance(v, ok):
            raise _TypeProblem(f"expected {tname}, got {show(v)}")
        return cast(v) if cast else v

    return hook


def converter(base: Path) -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict("int", int))
    conv.register_structure_hook(float, _strict("float", (int, float), float))
    conv.register_structure_hook(str, _strict("str", str))
    conv.register_structure_hook(bool, _strict("bool", bool))

    def path_hook(v: Any, _t: Any) -> Path:
        if not isinstance(v, str):
            raise _TypeProblem(f"expected a path string, got {show(v)}")
        return (base / Path(v).expanduser()).resolve()

    conv.register_structure_hook(Path, path_hook)

    def literal_hook(t: Any) -> Any:
        allowed = typing.get_args(t)

        def hook(v: Any, _t: Any) -> Any:
            if v not in allowed or type(v) is not type(next(a for a in allowed if a == v)):
                raise _TypeProblem(f"expected one of {', '.join(show(a) for a in allowed)}, "
                                   f"got {show(v)}")
            return v

        return hook

    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal, literal_hook)

    def workers_hook(v: Any, _t: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise _TypeProblem(f'expected "auto" or an int, got {show(v)}')

    conv.register_structure_hook_factory(lambda t: t == Workers, lambda _t: workers_hook)

    def seq_factory(t: Any, c: cattrs.Converter) -> Any:
        args = typing.get_args(t)
        is_tuple = typing.get_origin(t) is tuple
        if is_tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return lambda v, _t: _fixed_tuple(c, v, args)
        elem = args[0] if args else Any
        inner = list_structure_factory(list[elem], c)

        def hook(v: Any, _t: Any) -> Any:
            if not isinstance(v, (list, tuple)):
                raise _TypeProblem(f"expected a list, got {show(v)}")
            out = inner(v, list[elem])
            return tuple(out) if is_tuple else out

        return hook

    conv.register_structure_hook_factory(is_sequence, seq_factory)

    def map_factory(t: Any, c: cattrs.Converter) -> Any:
        inner = mapping_structure_factory(t, c)

        def hook(v: Any, _t: Any) -> Any:
            if not isinstance(v, Mapping):
                raise _TypeProblem(f"expected a table, got {show(v)}")
            return inner(v, t)

        return hook

    conv.register_structure_hook_factory(is_mapping, map_factory)
    return conv


def _fixed_tuple(c: cattrs.Converter, v: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != len(args):
        raise _TypeProblem(f"expected a list of {len(args)}, got {show(v)}")
    return tuple(c.structure(x, a) for x, a in zip(v, args, strict=True))


def drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [drop_none(v) for v in d]
    return d


unstructurer = cattrs.Converter()
unstructurer.register_unstructure_hook(Path, str)
