"""The config loader: strict types, unknown keys, paths, every problem at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from attrs import field, frozen

import dnax
from dnax.config import load_config


@frozen
class C:
    weights: Path | None = field(default=None)

BASE = """
[pipeline]
name = "t"
resolution = 8

[data]
plugin = "standin-digits"

[teacher]
plugin = "standin"

[space]
plugin = "standin"
"""


def _problems(registry, text, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(dnax.ConfigError) as e:
        load_config(path, registry)
    return e.value.problems


def test_valid_pipeline_loads_with_defaults(registry, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(BASE + '[trainer]\nplugin = "standin"\nepochs = 3\n')
    cfg = load_config(path, registry)
    assert cfg.sections["trainer"].config.epochs == 3
    assert cfg.sections["trainer"].config.mode == "fast"
    assert cfg.pipeline.resolution == 8
    assert cfg.source == path.resolve()


def test_unknown_key_and_wrong_type_are_exactly_two_problems(registry, tmp_path):
    problems = _problems(registry, BASE + '[trainer]\nplugin = "standin"\nepochs = "ten"\n'
                                          'epoch = 3\n', tmp_path)
    assert sorted(problems) == sorted([
        '$.trainer.epochs: expected int, got "ten"',
        "$.trainer.epoch: unknown key (did you mean 'epochs'?)",
    ])


@pytest.mark.parametrize(("extra", "expected"), [
    ('[trainer]\nplugin = "standin"\nepochs = -1\n', "$.trainer.epochs: must be > 0, got -1"),
    ('[trainer]\nplugin = "standin"\nepochs = true\n', "$.trainer.epochs: expected int, got true"),
    ('[trainer]\nplugin = "standin"\nepochs = 1.5\n', "$.trainer.epochs: expected int, got 1.5"),
    ('[trainer]\nplugin = "standin"\nmode = "medium"\n',
     '$.trainer.mode: expected one of "fast", "slow", got "medium"'),
    ('[trainer]\nplugin = "distil-standin"\n', "$.trainer.plugin: unknown trainer"),
    ('[trainer]\nepochs = 1\n', "$.trainer.plugin: required key missing"),
    ('[trainr]\nplugin = "standin"\n', "$.trainr: unknown table (did you mean 'trainer'"),
    ('[evaluator]\nplugin = "standin"\n', "$.trainer: required table missing (needed by "
                                          "[evaluator])"),
    ('[space.x]\ny = 1\n', "$.space.x: unknown key"),
    ('[pipeline.z]\n', "$.pipeline.z: unknown key"),
    ('[[costs]]\nplugin = "standin-params"\nbase = "a"\n',
     '$.costs[0].base: expected float, got "a"'),
    ('[selector]\nplugin = "standin"\nbudgets = 3\n', "$.selector.budgets: expected a table"),
])
def test_each_problem_names_its_path(registry, tmp_path, extra, expected):
    text = BASE
    if extra.startswith("[pipeline"):
        text = text.replace('[pipeline]\nname = "t"\nresolution = 8\n', "")
    problems = _problems(registry, text + extra, tmp_path)
    assert any(p.startswith(expected) for p in problems), problems


def test_missing_tables_and_bad_toml(registry, tmp_path):
    problems = _problems(registry, '[pipeline]\nname = "x"\n', tmp_path)
    assert problems == ["$.data: required table missing", "$.teacher: required table missing",
                        "$.space: required table missing"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(dnax.ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad, registry)
    with pytest.raises(dnax.ConfigError, match="no such pipeline file"):
        load_config(tmp_path / "nope.toml", registry)


def test_paths_resolve_relative_to_the_toml_file(tmp_path):
    from dnax.structure import converter as _converter

    conv = _converter(tmp_path / "sub")
    assert conv.structure({"weights": "w.safetensors"}, C).weights == \
        (tmp_path / "sub" / "w.safetensors").resolve()
    assert conv.structure({"weights": "/abs/w"}, C).weights == Path("/abs/w")


def test_resolved_config_round_trips(registry, tmp_path, pipeline):
    cfg = load_config(pipeline, registry)
    again = load_config(__import__("tomllib").loads(cfg.to_toml()), registry)
    assert again.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["trainer"] == {"plugin": "standin", "epochs": 1, "mode": "fast"}


def test_a_type_error_does_not_hide_a_failed_check_in_the_same_table(registry, tmp_path):
    text = BASE.replace('resolution = 8', 'resolution = "x"\nseed = -1\nthreads = -2')
    assert sorted(_problems(registry, text, tmp_path)) == [
        '$.pipeline.resolution: expected int, got "x"',
        "$.pipeline.seed: must be >= 0, got -1",
        "$.pipeline.threads: must be >= 0, got -2",
    ]


def test_paths_hold_whatever_keys_and_values_hold(registry, tmp_path):
    """A key or a value holding `` @ $`` (the separator of cattrs' messages) keeps its path."""
    problems = _problems(registry, BASE + '[trainer]\nplugin = "standin"\n"a @ $.b" = 1\n'
                         '[evaluator]\nplugin = "standin"\n[selector]\nplugin = "standin"\n'
                         'budgets = {"x @ $.y" = "z @ $.w"}\n', tmp_path)
    assert sorted(problems) == sorted([
        '$.trainer."a @ $.b": unknown key',
        "$.selector.budgets['x @ $.y']: expected float, got \"z @ $.w\"",
    ])


def test_check_gets_the_pipeline_and_the_registry(registry, tmp_path):
    """A plugin's ``check`` runs once everything converted, with the registry that loaded it."""
    from standins import StandinParams

    seen = []

    class Checked(StandinParams):
        @classmethod
        def check(cls, config, pipeline, registry):
            seen.append((pipeline.sections["trainer"].plugin, registry))
            return [f"base: {config.base} is not allowed"]

    class Plugin:
        @dnax.hookimpl
        def dnax_register_costs(self, register):
            register("checked", Checked)

    from dnax.registry import Registry

    reg = Registry.create(builtins=False, entry_points=False,
                          plugins=[*registry.pm.get_plugins(), Plugin()])
    problems = _problems(reg, BASE + '[trainer]\nplugin = "standin"\n'
                         '[[costs]]\nplugin = "checked"\nbase = 2.0\n', tmp_path)
    assert problems == ["$.costs: base: 2.0 is not allowed"]
    assert seen == [("standin", reg)]
    assert dnax.Plugin.check(None, None, reg) == [] and dnax.Plugin.Config is None
