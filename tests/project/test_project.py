"""Project-wide checks: packaging, the generated config reference, style, help texts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
from paths import ROOT

MAPPING = {"core": "dnax", "plugins": "dnax.plugins", "registry": "dnax.registry",
           "cli": "dnax.cli"}


def test_every_package_folder_is_listed_in_pyproject():
    """A folder missing from [tool.setuptools] packages would vanish from a normal install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert found == listed


def test_config_reference_is_up_to_date():
    from dnax.cli.reference import config_reference
    from dnax.registry import Registry

    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference(Registry.create(entry_points=False)), \
        "docs/config.md is stale: run `dnax config-reference -o docs/config.md`"


def test_every_builtin_config_key_has_a_help_line():
    from dnax.registry import Registry

    reg = Registry.create(entry_points=False)
    for table in reg.tables.values():
        for entry in table.values():
            for a in attrs.fields(entry.config_cls):
                assert a.metadata.get("help"), f"{entry.kind} {entry.name}: {a.name}"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    res = subprocess.run([ruff, "check", "--no-cache", "core", "plugins", "registry", "cli",
                          "tests", "docs/reproduction"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]


def test_kernel_has_no_model_code_and_names_no_plugin():
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text()
        assert "torch.nn" not in text.replace("torch.nn.Module", ""), path
        assert "dnax.plugins." not in text, path


def test_hook_reference_is_up_to_date_and_every_hook_is_called():
    """docs/hooks.md documents every hook, and dnax calls every hook it declares."""
    from dnax.cli.reference import hook_names, hooks_reference

    assert (ROOT / "docs" / "hooks.md").read_text() == hooks_reference(), \
        "docs/hooks.md is stale: run `dnax hooks-reference -o docs/hooks.md`"
    code = "\n".join(p.read_text() for folder in ("core", "registry", "plugins", "cli")
                     for p in (ROOT / folder).rglob("*.py") if p.name != "hookspecs.py")
    uncalled = [n for n in hook_names() if f".{n}(" not in code and f'"{n}"' not in code]
    assert not uncalled, f"hooks declared but never called: {uncalled}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "plugins").with_suffix("")
    parts = ["dnax", "plugins", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def plugin_imports() -> dict[str, set[str]]:
    """Every plugin module and the plugin modules it imports, lazily (inside functions) or not,
    read from the source with :mod:`ast` (nothing is imported)."""
    import ast

    files = {_module_name(p): p for p in (ROOT / "plugins").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            # the most specific plugin module each import names
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of nodes, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_cycle_finder_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_no_import_cycle_between_plugin_modules():
    graph = plugin_imports()
    # importing a module imports its packages first: a package that imported its own modules
    # would close a cycle the edges below do not show, so packages import none
    packages = {n: e for n, e in graph.items() if (ROOT / "plugins" / Path(
        *n.split(".")[2:]) / "__init__.py").exists()}
    assert "dnax.plugins.measure" in packages
    assert not {n: e for n, e in packages.items() if e}, "a plugin package imports a module"
    graph = {n: {m for m in e if m not in packages} for n, e in graph.items()}
    # the scan sees the imports it must: the latency model reads tables, the profiler writes them
    assert "dnax.plugins.costs.latency" in graph["dnax.plugins.measure.profile"]
    assert "dnax.plugins.costs.runtimes" in graph["dnax.plugins.costs.latency"]
    assert "dnax.plugins.evaluators.tree" in graph["dnax.plugins.evaluators.prefix"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
