"""Registries: validation on registration, duplicates, close matches, broken plugins."""

from __future__ import annotations

import json

import pytest

import dnax
from dnax.registry import Registry
from standins import StandinPlugin, StandinTrainer


def test_builtins_and_standins_are_listed_with_their_origin(registry):
    data = registry.to_json()
    assert set(data["kinds"]) == {"data", "teacher", "space", "trainer", "evaluator", "costs",
                                  "selector", "retrainer"}
    trainer = {e["name"]: e for e in data["kinds"]["trainer"]}["standin"]
    assert trainer["distribution"] == "<local>"
    assert trainer["doc"] == "Stores one tensor per block, fires the block hooks."
    for kind, entries in data["kinds"].items():
        for e in entries:
            if e["distribution"] == "dnax":
                assert e["module"].startswith("dnax.plugins."), (kind, e)


def test_duplicate_name_is_refused_naming_both_origins():
    class Again:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            register("standin", StandinTrainer)

    with pytest.raises(dnax.PluginError, match=r"trainer 'standin' is registered twice: by "
                                               r"<local>.*and by <local>"):
        Registry.create(builtins=False, entry_points=False, plugins=[StandinPlugin(), Again()])


def test_unknown_name_lists_close_matches(registry):
    with pytest.raises(dnax.PluginError, match=r"unknown trainer 'standim' \(did you mean "
                                               r"'standin'\?\)"):
        registry.get("trainer", "standim")
    with pytest.raises(dnax.PluginError, match="known: "):
        registry.get("trainer", "zzzzzzzz")


@pytest.mark.parametrize(("cls", "match"), [
    (int, "is not a subclass of dnax.BlockTrainer"),
    (dnax.BlockTrainer, "does not implement train"),
])
def test_register_validates_the_class(cls, match):
    class Bad:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            register("bad", cls)

    with pytest.raises(dnax.PluginError, match=match):
        Registry.create(builtins=False, entry_points=False, plugins=[Bad()])


def test_missing_config_class_and_bad_name_are_refused():
    class NoConfig(dnax.BlockTrainer):
        def train(self, ctx):
            raise NotImplementedError

    class Bad:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            register("Bad Name", StandinTrainer)

    class Bad2:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            register("noconf", NoConfig)

    with pytest.raises(dnax.PluginError, match="name must match"):
        Registry.create(builtins=False, entry_points=False, plugins=[Bad()])
    with pytest.raises(dnax.PluginError, match="needs an attrs config class"):
        Registry.create(builtins=False, entry_points=False, plugins=[Bad2()])


class _EP:
    """A stand-in for importlib.metadata.EntryPoint."""

    def __init__(self, name, obj, dist="broken-dist"):
        self.name, self.value, self._obj = name, f"{name}_module", obj
        self.dist = type("D", (), {"name": dist, "version": "9.9"})()

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_broken_third_party_plugin_is_reported_and_others_still_load(monkeypatch):
    class Misspelt:
        @dnax.hookimpl
        def dnax_register_trainer(self, register):  # not a hook: misspelt
            pass

    class Raises:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            raise RuntimeError("boom")

    class Good:
        @dnax.hookimpl
        def dnax_register_trainers(self, register):
            register("good", StandinTrainer)

    eps = [_EP("imports", ImportError("no module named x")), _EP("misspelt", Misspelt()),
           _EP("raises", Raises()), _EP("good", Good(), "good-dist")]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    reg = Registry.create(builtins=False, entry_points=True)
    failures = {f.name: f for f in reg.failures}
    assert set(failures) == {"imports", "misspelt", "raises"}
    assert failures["imports"].distribution == "broken-dist"
    assert "no module named x" in failures["imports"].error
    assert "dnax_register_trainer" in failures["misspelt"].error
    assert "boom" in failures["raises"].error
    assert reg.get("trainer", "good").origin.distribution == "good-dist"
    with pytest.raises(dnax.PluginError, match="plugin 'imports' from broken-dist failed"):
        reg.get("trainer", "nothing")


def test_autoload_can_be_disabled(monkeypatch):
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [_EP("x", ImportError("loaded"))])
    monkeypatch.setenv("DNAX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry.create(builtins=False).failures == []
    monkeypatch.delenv("DNAX_DISABLE_PLUGIN_AUTOLOAD")
    assert len(Registry.create(builtins=False).failures) == 1


def test_every_hookspec_is_documented_and_prefixed():
    import inspect

    from dnax import hookspecs

    specs = [n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and
             hasattr(f, "dnax_spec")]
    assert len(specs) >= 14
    for name in specs:
        assert name.startswith("dnax_")
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_plugins_json_is_serialisable(registry):
    assert json.loads(json.dumps(registry.to_json()))["failures"] == []
