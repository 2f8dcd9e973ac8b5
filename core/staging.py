"""A run's plan, and finished stages redone without being lost.

Before a run touches its folder, :func:`plan_stages` decides for each stage: ``reuse`` (finished
with the same hash), ``run`` (never finished), ``resume`` (interrupted under the same config) or
``redo`` (finished, but forced, changed, or after a stage that runs again), with the reason: the
changed keys. Redoing a finished stage needs ``--force STAGE`` or ``--rerun``; without either the
run stops with one line naming the changed keys and the stages they would redo.

A finished stage that is redone writes aside, into ``.redo/<stage>/`` (a :class:`StagedRunDir`
maps the stage's folders there), so a crash, a kill or an error leaves the old artefacts and
their record in place. When the stage finishes, :func:`swap` puts the new artefacts in place
through a journal (``.redo/<stage>/swap.json``); a kill during the swap is finished by the next
run (:func:`finish_swaps`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from attrs import frozen

from .errors import ConfigError
from .rundir import RunDir

#: where redone stages write until they finish
ASIDE = ".redo"

Action = Literal["reuse", "run", "resume", "redo"]


@frozen
class StagePlan:
    """What a run will do with one stage, and why."""

    stage: str
    action: Action
    reason: str = ""


def plan_stages(rd: RunDir, stages: Sequence[Any], tables: Mapping[str, Any],
                hashes: Mapping[str, str], *, force: str | None = None, rerun: bool = False,
                runtime: Collection[str] = ()) -> list[StagePlan]:
    """Each stage's :class:`StagePlan`; a ConfigError (one line) when a finished stage would be
    redone without ``force`` (at or before it) or ``rerun``. ``runtime``: dotted keys
    (``trainer.num_workers``) left out of hashes; a stage recorded when they were still hashed
    is reused if only they differ."""
    names = [s.name for s in stages]
    forced_from = names.index(force) if force in names else len(names)
    out: list[StagePlan] = []
    upstream = ""  # the first stage that runs again: every finished stage after it is redone
    consented = False
    for i, stage in enumerate(stages):
        name = stage.name
        record = rd.read_json(f"stages/{name}.json", kind="stage") if rd.exists(
            f"stages/{name}.json") else None
        if record is None:
            marker = f"stages/{name}.started.json"
            started = rd.exists(marker) and rd.read_json(marker, kind="stage-start").get(
                "hash") == hashes[name]
            out.append(StagePlan(name, "resume" if started else "run",
                                 "interrupted earlier" if started else "not finished yet"))
            upstream = upstream or name
            continue
        forced = i >= forced_from
        stored = record.get("config")  # None in records older than this field
        changed = record.get("hash") != hashes[name] and not (stored is not None and all(
            k.split(" (")[0] in runtime for k in changed_keys(stored, tables[name])))
        if not (forced or changed or upstream):
            out.append(StagePlan(name, "reuse", "finished with this config"))
            continue
        keys = changed_keys(stored, tables[name]) if changed and stored is not None else []
        if forced:
            reason = f"--force {force}"
        elif keys:
            reason = "changed: " + ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        elif upstream:
            reason = f"after {upstream}, which runs again"
        else:
            reason = "its config, or dnax's artefact format, changed"
        if not (forced or rerun or consented):
            what = (f"$.{keys[0].replace(' (', ' changed (', 1)}"
                    + (f" and {len(keys) - 1} more keys" if len(keys) > 1 else "")
                    + f" since the {name} stage finished" if keys else
                    f"run: the {name} stage finished, but {reason}")
            raise ConfigError(f"{what}; that redoes {', '.join(names[i:])}: re-run with "
                              f"--force {name} (or --rerun), restore the config, or use "
                              "another --run-dir")
        consented = True
        out.append(StagePlan(name, "redo", reason))
        upstream = upstream or name
    return out


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config tables, ``old`` -> ``new`` shown."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in changed_keys(old.get(key, _MISSING), new.get(key, _MISSING),
                                      f"{prefix}.{key}" if prefix else str(key))]
    if old == new:
        return []
    return [f"{prefix} ({_show(old)} -> {_show(new)})"]


class _Missing:
    def __repr__(self) -> str:
        return "unset"


_MISSING = _Missing()


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, _Missing) else "unset"
    return text if len(text) <= 40 else text[:37] + "..."


# --- writing aside -----------------------------------------------------------------------------


class StagedRunDir(RunDir):
    """The run directory as a redone stage sees it: its own folders (``owned``) live in
    ``.redo/<stage>/``, everything else where it always is."""

    def __init__(self, root: str | os.PathLike, stage: str, owned: Sequence[str]):
        super().__init__(root)
        self.aside = self.root / ASIDE / stage
        self.owned = tuple(owned)

    def path(self, *parts: str) -> Path:
        rel = Path(*parts) if parts else Path()
        if rel.parts and rel.parts[0] in self.owned:
            return self.aside / rel
        return self.root / rel

    def rel(self, path: str | os.PathLike) -> str:
        p = Path(path).resolve()
        return p.relative_to(self.aside if p.is_relative_to(self.aside) else self.root
                             ).as_posix()


def swap(rd: RunDir, stage: str, owned: Sequence[str], record: Mapping[str, Any],
         kind: str) -> None:
    """Put a redone stage's artefacts (in ``.redo/<stage>/``) in place of the old ones and
    write its ``record``, through a journal that :func:`finish_swaps` completes after a kill."""
    aside = rd.root / ASIDE / stage
    produced = [name for name in owned if (aside / name).exists()]
    rd.write_json(f"{ASIDE}/{stage}/swap.json", {"stage": stage, "owned": list(owned),
                                                "produced": produced, "record": dict(record),
                                                "record_kind": kind}, kind="swap")
    _finish(rd, stage)


def finish_swaps(rd: RunDir) -> list[str]:
    """Complete every swap a kill interrupted; return their stages."""
    root = rd.root / ASIDE
    done = [p.parent.name for p in sorted(root.glob("*/swap.json"))] if root.is_dir() else []
    for stage in done:
        _finish(rd, stage)
    return done


def _finish(rd: RunDir, stage: str) -> None:
    aside = rd.root / ASIDE / stage
    journal = rd.read_json(f"{ASIDE}/{stage}/swap.json", kind="swap")
    old = aside / ".old"
    old.mkdir(exist_ok=True)
    for name in journal["owned"]:
        new, current = aside / name, rd.root / name
        if name in journal["produced"] and not new.exists():
            continue  # moved in place before the kill
        if current.exists():
            if (old / name).exists():
                _remove(old / name)
            os.replace(current, old / name)
        if new.exists():
            os.replace(new, current)
    body = {k: v for k, v in journal["record"].items() if k not in ("format", "format_version")}
    rd.write_json(f"stages/{stage}.json", body, kind=journal["record_kind"])
    shutil.rmtree(aside)
    with contextlib.suppress(OSError):  # other stages may still be aside
        aside.parent.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
