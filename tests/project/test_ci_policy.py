"""Under CI=true a skip whose reason is not listed in conftest.ALLOWED_SKIPS fails the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from paths import SUPPORT, TESTS

SAMPLE = '''
import pytest

def test_skipped_for_an_unlisted_reason():
    pytest.skip("some dependency is missing")

def test_skipped_for_a_listed_reason():
    pytest.skip("needs CUDA")
'''


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(SUPPORT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_sample.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_unlisted_skip_fails_under_ci(tmp_path):
    res = _run(tmp_path, "true")
    assert res.returncode == 1, res.stdout
    assert "1 failed" in res.stdout and "1 skipped" in res.stdout
    assert "skipped under CI=true" in res.stdout and "some dependency is missing" in res.stdout


@pytest.mark.slow
def test_skips_stay_skips_outside_ci(tmp_path):
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stdout
    assert "2 skipped" in res.stdout
