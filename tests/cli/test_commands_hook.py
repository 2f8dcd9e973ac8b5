"""``dnax_register_commands(cli)``: plugins add ``dnax`` commands; a broken one is reported."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import dnax
from dnax.cli.app import app
from dnax.registry import Registry

cli = CliRunner()


class _EP:
    """A stand-in for importlib.metadata.EntryPoint of a third-party distribution."""

    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"{name}_module", obj
        self.dist = type("D", (), {"name": f"{name}-dist", "version": "1.0"})()

    def load(self):
        return self._obj


class Greets:
    @dnax.hookimpl
    def dnax_register_commands(self, cli):
        @cli.command("greet")
        def greet(name: str = "world") -> None:
            """Greet someone."""
            typer.echo(f"hi {name}")

        tools = typer.Typer(help="A group of tools.")

        @tools.command("count")
        def count(n: int) -> None:
            typer.echo(" ".join(str(i) for i in range(n)))

        cli.add_typer(tools, name="tools")


class Raises:
    @dnax.hookimpl
    def dnax_register_commands(self, cli):
        @cli.command("half-done")
        def half_done() -> None:
            pass

        raise RuntimeError("boom")


class TakesRun:
    @dnax.hookimpl
    def dnax_register_commands(self, cli):
        @cli.command("run")
        def run() -> None:
            pass


@pytest.fixture
def plugged(monkeypatch):
    eps = [_EP("greets", Greets()), _EP("raises", Raises()), _EP("takes-run", TakesRun())]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    reg = Registry.create(builtins=False, entry_points=True)
    calls = []

    def get_registry():
        calls.append(1)
        return reg

    monkeypatch.setattr("dnax.cli.app.get_registry", get_registry)
    return reg, calls


def test_plugin_commands_run_and_broken_plugins_are_reported(plugged):
    reg, _ = plugged
    res = cli.invoke(app, ["greet", "--name", "you"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert res.stdout == "hi you\n"
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: plugin '") for w in warnings)
    assert "raises-dist failed: RuntimeError: boom" in res.stderr
    assert "takes-run-dist failed: PluginError: command 'run' is already a dnax command" \
        in res.stderr
    assert {f.name for f in reg.failures} == {"raises", "takes-run"}
    res = cli.invoke(app, ["tools", "count", "3"])
    assert res.exit_code == 0 and res.stdout == "0 1 2\n"
    assert len(reg.failures) == 2  # reported again, recorded once


def test_help_lists_them_and_a_broken_plugin_adds_nothing(plugged):
    res = cli.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "greet" in res.stdout and "tools" in res.stdout and "half-done" not in res.stdout
    assert cli.invoke(app, ["half-done"]).exit_code == 2  # no such command
    res = cli.invoke(app, ["run", "--help"])
    assert "Run a pipeline" in res.stdout  # the built-in command, not the plugin's


def test_built_in_commands_do_not_load_plugins(plugged):
    _, calls = plugged
    assert cli.invoke(app, ["--version"]).exit_code == 0
    assert cli.invoke(app, ["bench", "--help"]).exit_code == 0
    assert calls == []


def test_a_built_in_or_explicit_plugin_that_raises_is_a_bug(monkeypatch):
    reg = Registry.create(builtins=False, entry_points=False, plugins=[Raises()])
    monkeypatch.setattr("dnax.cli.app.get_registry", lambda: reg)
    res = cli.invoke(app, ["greet"])
    assert isinstance(res.exception, RuntimeError) and reg.failures == []
