"""Plugin registries: one name → (class, config class, origin) table per kind.

Filled from the built-in plugins (``dnax.plugins``) and from every module listed under the
entry-point group ``dnax``, each loaded in its own try/except so that one broken plugin is
reported and does not stop the others. ``DNAX_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points.
Hooks that others call one plugin at a time (the CLI's ``dnax_register_commands``) report a
plugin's failure the same way: :meth:`Registry.implementations` and :meth:`Registry.report`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy
from attrs import frozen

from dnax import hookspecs
from dnax.errors import PluginError
from dnax.interfaces import KIND, PLUGIN_KINDS

ENTRY_POINT_GROUP = "dnax"
DISABLE_ENV = "DNAX_DISABLE_PLUGIN_AUTOLOAD"

_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@frozen
class Origin:
    """Who registered a component: a distribution (and version) and the plugin module."""

    distribution: str
    version: str
    module: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} ({self.module})"


@frozen
class Entry:
    kind: str
    name: str
    cls: type
    config_cls: type
    origin: Origin

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.cls) or "").split("\n\n")[0].replace("\n", " ")


@frozen
class PluginFailure:
    """A plugin that could not be loaded or registered; reported, never fatal."""

    name: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return f"plugin '{self.name}' from {self.distribution} failed: {self.error}"


class Registry:
    """The plugin manager plus one table per kind. Build one with :meth:`create`."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.tables: dict[str, dict[str, Entry]] = {k.name: {} for k in PLUGIN_KINDS}
        self.failures: list[PluginFailure] = []
        self._origins: dict[str, Origin] = {}
        self._strict: dict[str, bool] = {}  # errors of built-in/explicit plugins raise

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @classmethod
    def create(cls, *, builtins: bool = True, entry_points: bool | None = None,
               plugins: Iterable[object] = ()) -> Registry:
        """Load built-ins, entry points (unless disabled) and extra plugin objects/modules."""
        pm = pluggy.PluginManager("dnax")
        pm.add_hookspecs(hookspecs)
        reg = cls(pm)
        if builtins:
            from dnax.plugins import BUILTINS

            version = md.version("dnax")
            for modname in BUILTINS:
                module = importlib.import_module(modname)
                reg._add(module, modname, Origin("dnax", version, modname), strict=True)
        if entry_points is None:
            entry_points = not os.environ.get(DISABLE_ENV)
        if entry_points:
            reg._load_entry_points()
        for i, plugin in enumerate(plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            reg._add(plugin, name, Origin("<local>", "", name), strict=True)
        reg._collect()
        return reg

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else ""
            try:
                module = ep.load()
                self._add(module, ep.name, Origin(dist, version, ep.value), strict=False)
            except Exception as e:
                self.failures.append(PluginFailure(ep.name, dist, _first_line(e)))

    def _add(self, plugin: object, name: str, origin: Origin, *, strict: bool) -> None:
        if self.pm.is_registered(plugin):
            return
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            if strict:
                raise
            self.failures.append(PluginFailure(name, origin.distribution, _first_line(e)))
            return
        key = self.pm.get_name(plugin) or name
        self._origins[key] = origin
        self._strict[key] = strict

    def _collect(self) -> None:
        for kind, hookname in ((k.name, k.hook) for k in PLUGIN_KINDS):
            for impl in getattr(self.pm.hook, hookname).get_hookimpls():
                origin = self._origins[impl.plugin_name]
                strict = self._strict[impl.plugin_name]

                def register(name: str, cls: type, config_cls: type | None = None, *,
                             _kind: str = kind, _origin: Origin = origin) -> None:
                    self._register(_kind, name, cls, config_cls, _origin)

                try:
                    impl.function(register)
                except Exception as e:
                    if strict:
                        raise
                    self.failures.append(PluginFailure(impl.plugin_name, origin.distribution,
                                                       _first_line(e)))

    def _register(self, kind: str, name: str, cls: type, config_cls: type | None,
                  origin: Origin) -> None:
        where = f"{kind} '{name}' from {origin}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"{where}: name must match {_NAME.pattern}")
        base = KIND[kind].interface
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{where}: {cls!r} is not a subclass of dnax.{base.__name__}")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise PluginError(f"{where}: {cls.__name__} does not implement {missing}")
        config_cls = config_cls or cls.Config
        if config_cls is None or not attrs.has(config_cls):
            raise PluginError(f"{where}: needs an attrs config class (pass config_cls or set "
                              f"{cls.__name__}.Config)")
        table = self.tables[kind]
        if name in table:
            raise PluginError(f"{kind} '{name}' is registered twice: by {table[name].origin} "
                              f"and by {origin}")
        table[name] = Entry(kind, name, cls, config_cls, origin)

    # --- hooks called one plugin at a time -----------------------------------------------

    def implementations(self, hookname: str) -> list[tuple[str, Callable[..., Any]]]:
        """``(plugin name, call)`` for every implementation of ``hookname``, in the order the
        plugins were registered. ``call(**kwargs)`` passes an implementation the arguments it
        declares; run each in its own ``try`` and hand what it raises to :meth:`report`, so
        that one broken plugin does not stop the others (as the registration hooks are run)."""
        out = []
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            def call(_impl: Any = impl, **kwargs: Any) -> Any:
                return _impl.function(**{k: kwargs[k] for k in _impl.argnames})
            out.append((impl.plugin_name, call))
        return out

    def report(self, plugin_name: str, error: BaseException) -> PluginFailure:
        """Record that plugin ``plugin_name`` failed with ``error`` in :attr:`failures` and
        return the record; a built-in or explicitly passed plugin's error is raised instead."""
        if self._strict.get(plugin_name, True):
            raise error
        origin = self._origins[plugin_name]
        failure = PluginFailure(plugin_name, origin.distribution, _first_line(error))
        if failure not in self.failures:  # a hook called again fails again: recorded once
            self.failures.append(failure)
        return failure

    # --- lookup --------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises :class:`PluginError` with close
        matches and the plugins that failed to load."""
        if kind not in self.tables:
            raise PluginError(f"unknown plugin kind '{kind}' (one of: {', '.join(self.tables)})")
        try:
            return self.tables[kind][name]
        except KeyError:
            pass
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                else f"known: {', '.join(known) or 'none'}")
        broken = "".join(f"; {f}" for f in self.failures)
        raise PluginError(f"unknown {kind} {name!r} ({hint}){broken}")

    def create_plugin(self, kind: str, name: str, config: Any) -> Any:
        return self.get(kind, name).cls(config)

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": {
                kind: [{"name": e.name, "class": f"{e.cls.__module__}.{e.cls.__qualname__}",
                        "distribution": e.origin.distribution, "version": e.origin.version,
                        "module": e.origin.module, "doc": e.doc}
                       for e in sorted(table.values(), key=lambda e: e.name)]
                for kind, table in self.tables.items()
            },
            "failures": [attrs.asdict(f) for f in self.failures],
        }


_default: Registry | None = None


def get_registry(*, refresh: bool = False) -> Registry:
    """The process-wide registry (built-ins + entry points), built on first use."""
    global _default
    if _default is None or refresh:
        _default = Registry.create()
    return _default


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0]
