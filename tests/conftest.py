import copy
import os

import pytest

#: the fault recorder behind docs/reliability.md (`--reliability-md PATH`)
pytest_plugins = ["reliability"]

os.environ.setdefault("NO_COLOR", "1")
os.environ.setdefault("COLUMNS", "120")


@pytest.fixture
def registry():
    """Built-ins plus the stand-ins, without third-party entry points."""
    from dnax.registry import Registry
    from standins import StandinPlugin

    return Registry.create(entry_points=False, plugins=[StandinPlugin()])


@pytest.fixture
def pipeline():
    from standins import PIPELINE

    return copy.deepcopy(PIPELINE)


@pytest.fixture(autouse=True)
def _reset_calls():
    from standins import CALLS

    CALLS.clear()
