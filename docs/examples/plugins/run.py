"""Runs pipeline.toml with the example plugins of this folder registered directly, without a
package or an entry point: ``python docs/examples/plugins/run.py [RUN_DIR]``."""

import importlib.util
import json
import sys
from pathlib import Path

import dnax
from dnax.registry import Registry

HERE = Path(__file__).resolve().parent
MODULES = ("data_source", "teacher", "space", "trainer", "evaluator", "cost_model", "selector",
           "retrainer")


def load(name):
    """One example module, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"dnax_plugin_examples.{name}",
                                                  HERE / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registry():
    """The built-in plugins plus every example module (entry points left out)."""
    return Registry.create(entry_points=False, plugins=[load(name) for name in MODULES])


if __name__ == "__main__":
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/plugin-examples"
    run = dnax.run_pipeline(HERE / "pipeline.toml", run_dir, registry=registry())
    print(json.dumps(run.report, indent=2))
