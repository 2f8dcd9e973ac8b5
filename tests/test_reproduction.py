"""docs/reproduction/reproduce.py: the smoke scale end to end on real Fashion-MNIST images, its
raw files, resuming, the table regenerated from the raw files alone, and the correlations."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "reproduction" / "reproduce.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _load():
    spec = importlib.util.spec_from_file_location("dnax_reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


repro = _load()

needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST missing (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Other processes share the 2 cores: one thread is faster and steadier here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the correlations, against values worked out by hand -------------------------------------

def test_spearman_and_kendall_by_hand():
    # one swapped pair of four: tau = (5 - 1) / 6, rho = 1 - 6 * 2 / (4 * 15)
    assert repro.kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert repro.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert repro.kendall([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert repro.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # a tie in x: tau-b = 5 / sqrt(5 * 6); ranks (1, 2.5, 2.5, 4) give rho = 4.5 / sqrt(4.5 * 5)
    assert repro.kendall([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert repro.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert list(repro.rankdata([10, 30, 20, 30])) == [1.0, 3.5, 2.0, 3.5]
    # undefined: too few values, or one of them constant
    assert math.isnan(repro.kendall([1], [2])) and math.isnan(repro.spearman([1], [2]))
    assert math.isnan(repro.kendall([1, 1, 1], [1, 2, 3]))
    assert math.isnan(repro.spearman([1, 2, 3], [5, 5, 5]))


# --- the smoke scale end to end -----------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every step at the smoke scale into a fresh folder; returns (folder, stdout)."""
    base = tmp_path_factory.mktemp("repro")
    results = base / "smoke"
    args = ["--scale", "smoke", "--results", str(results), "--table",
            str(results / "RESULTS.md"), "--threads", "1"]
    out = _run(args)
    return results, args, out


def _run(args: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert repro.main(args) == 0
    return buf.getvalue()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@needs_fashion
def test_smoke_writes_every_raw_file(smoke):
    results, _, out = smoke
    n = repro.SCALES["smoke"].archs
    steps = json.loads((results / "steps.json").read_text())
    assert set(steps) == {"search", "sample", "standalone", "spos"}
    assert all(r["finished"] and r["seconds"] >= 0 and r["sessions"] == 1
               for r in steps.values())

    search = json.loads((results / "search.json").read_text())
    teacher, student = search["teacher"], search["student"]
    assert teacher["params"] == search["budgets"]["params"]
    assert student["params"] <= teacher["params"]  # selected under the teacher's budget
    assert student["params"] == student["predicted_costs"]["params"]  # cost model is exact
    assert 0 <= teacher["top1"] <= 100 and 0 <= student["top1"] <= 100
    assert len(search["blocks"]) == len(repro.TEACHER_ARCH) - 1
    assert all(b["candidates"] == 6 + 36 + 216 for b in search["blocks"])

    spec = json.loads((results / "archs.json").read_text())
    archs = spec["archs"]
    assert [a["id"] for a in archs] == list(range(n))
    assert len({tuple(a["candidates"]) for a in archs}) == n
    for a in archs:
        assert a["arch_def"][0] == list(repro.TEACHER_ARCH[0])  # the fixed stem stage
        assert len(a["arch_def"]) == len(repro.TEACHER_ARCH)
        assert all(len(stage) == len(ops) for stage, ops in zip(a["arch_def"][1:], a["ops"],
                                                                 strict=True))
        assert a["rating"] == pytest.approx(sum(a["block_scores"]))
        assert math.isfinite(a["rating"]) and a["params"] > 0 and a["flops"] > 0

    alone = _csv(results / "standalone.csv")
    assert [int(r["id"]) for r in alone] == list(range(n))
    for r, a in zip(alone, archs, strict=True):
        assert int(r["params"]) == a["params"]  # the network timm built = archs.json's
        assert 0 <= float(r["top1"]) <= 100 and int(r["epochs"]) == 1
    spos = _csv(results / "spos.csv")
    assert [int(r["id"]) for r in spos] == list(range(n))
    assert all(0 <= float(r["top1"]) <= 100 for r in spos)

    assert out.count("[standalone] arch ") == n and out.count("[spos] arch ") == n
    table = (results / "RESULTS.md").read_text()
    assert "| DNA rating" in table and "| SPOS supernet top-1" in table
    assert f"| {n} |" in table and "| searched student |" in table


@needs_fashion
def test_rerun_skips_finished_steps_and_regenerates_the_same_table(smoke):
    results, args, _ = smoke
    before = (results / "RESULTS.md").read_text()
    steps = (results / "steps.json").read_text()
    out = _run(args)
    assert out.count("finished earlier, skipped") == 4
    assert (results / "steps.json").read_text() == steps
    assert (results / "RESULTS.md").read_text() == before
    _run([*args, "table"])
    assert (results / "RESULTS.md").read_text() == before


@needs_fashion
def test_table_needs_only_the_raw_files(smoke, tmp_path):
    results, _, _ = smoke
    copy = tmp_path / results.name  # same folder name: the table names it
    copy.mkdir()
    for name in repro.Experiment.RAW:
        shutil.copy(results / name, copy / name)
    _run(["table", "--scale", "smoke", "--results", str(copy), "--table",
          str(copy / "RESULTS.md")])
    assert (copy / "RESULTS.md").read_text() == (results / "RESULTS.md").read_text()


@needs_fashion
def test_standalone_resumes_at_the_missing_architecture(smoke, tmp_path):
    results, _, _ = smoke
    work = tmp_path / results.name
    shutil.copytree(results, work)
    rows = _csv(work / "standalone.csv")
    # killed while training the last architecture: its row and model are missing
    repro.write_csv(work / "standalone.csv", rows[:-1], repro.STANDALONE)
    shutil.rmtree(work / "standalone" / f"arch{int(rows[-1]['id']):03d}")
    steps = json.loads((work / "steps.json").read_text())
    del steps["standalone"]["finished"]
    repro.write_json(work / "steps.json", steps)
    out = _run(["standalone", "--scale", "smoke", "--results", str(work), "--threads", "1"])
    assert out.count("[standalone] arch ") == 1
    again = _csv(work / "standalone.csv")
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert again[-1]["top1"] == rows[-1]["top1"]  # the fixed recipe is deterministic
    assert json.loads((work / "steps.json").read_text())["standalone"]["sessions"] == 2


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    repro.write_json(tmp_path / "settings.json", {"scale": "smoke", "seed": 1})
    with pytest.raises(SystemExit, match="other settings"):
        repro.main(["table", "--scale", "smoke", "--results", str(tmp_path)])


def test_table_without_raw_files_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match=r"settings\.json: missing"):
        repro.main(["table", "--scale", "smoke", "--results", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
