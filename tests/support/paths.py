"""Where the tests find the project: its root, the docs' examples, the tests' own data."""

from __future__ import annotations

from pathlib import Path

#: the repository's root (the folder of pyproject.toml)
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SUPPORT = TESTS / "support"
#: small files the tests read (CSV ground truths, ...)
DATA = SUPPORT / "data"
EXAMPLES = ROOT / "docs" / "examples"
#: the worked example of a packaged third-party plugin (docs/plugins.md, section 9)
EXAMPLE_PLUGIN = TESTS / "example_plugin"
