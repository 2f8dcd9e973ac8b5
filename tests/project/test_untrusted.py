"""Untrusted files: nothing a user hands dnax (teacher weights, resume states in a run directory)
is unpickled without ``weights_only=True``; pickled code is refused with one line and never
runs."""

from __future__ import annotations

import ast
import shlex
import shutil
from pathlib import Path

import faultkit
import pytest
import torch
from paths import ROOT

import dnax

pytest_plugins = ["reliability"]



@pytest.fixture(autouse=True)
def _torch():
    with faultkit.torch_settings():
        yield


class Payload:
    """Pickles into a call of os.system: unpickling it runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def malicious(path: Path, marker: Path, state: dict) -> Path:
    """A torch file holding ``state`` plus the payload; checked live (it does run when loaded
    with weights_only=False)."""
    torch.save({**state, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    return path


@pytest.mark.slow  # runs a pipeline (tiny_reference)
def test_malicious_teacher_weights_are_refused(tiny_reference, tmp_path, fault):
    marker = tmp_path / "pwned"
    from dnax.plugins.teachers.efficientnet import EfficientNetTeacher

    teacher = EfficientNetTeacher(dnax.load_pipeline(tiny_reference.toml).sections["teacher"]
                                  .config)
    state = teacher.build_model(10).state_dict()  # the right keys: only the payload is wrong
    evil = malicious(tmp_path / "teacher.pth", marker, state)
    toml = faultkit.write_pipeline(tmp_path / "p.toml",
                                   faultkit.pipeline(teacher={"weights": str(evil)}))
    res = faultkit.cli(["run", toml, "--run-dir", tmp_path / "run"])
    lines = res.stderr.strip().splitlines()
    fault.record(category="untrusted", fault="pickled os.system call in the teacher's weights "
                 "file (.pth), `dnax run`", outcome=f"exit {res.exit_code}: "
                 f"{lines[-1].split(': ', 2)[-1] if lines else ''}; "
                 f"payload {'RAN' if marker.exists() else 'never ran'}")
    assert not marker.exists()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {evil}: refused") and "weights_only=True" in lines[0]


#: stage -> the resume state it loads, when the stage was interrupted
RESUMES = {"teacher": "teacher/resume.pt", "train": "supernets/resume.pt",
           "retrain": "model/resume.pt"}


@pytest.mark.slow  # runs a pipeline (tiny_reference)
@pytest.mark.parametrize("stage", list(RESUMES))
def test_malicious_resume_state_is_refused(tiny_reference, tmp_path, fault, stage):
    """A run directory from elsewhere whose interrupted stage holds a booby-trapped resume
    state: resuming refuses it."""
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    faultkit.keep_until(tiny_reference.run_dir, run_dir, stage)
    shutil.copy2(tiny_reference.run_dir / f"stages/{stage}.started.json", run_dir / "stages")
    rel = RESUMES[stage]
    (run_dir / rel).parent.mkdir(exist_ok=True)
    malicious(run_dir / rel, marker, {"format_version": dnax.FORMAT_VERSION, "epoch": 1})
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir])
    lines = res.stderr.strip().splitlines()
    fault.record(category="untrusted", fault=f"pickled os.system call in {rel} of an "
                 f"interrupted {stage} stage, `dnax run`", outcome=f"exit {res.exit_code}: "
                 f"cannot load resume state; payload {'RAN' if marker.exists() else 'never ran'}")
    assert not marker.exists()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {run_dir / rel}: cannot load resume state")
    assert "Traceback" not in res.output


# --- every loader in the code base --------------------------------------------------------


def calls(tree: ast.AST):
    """Every call with its dotted callee (``torch.serialization.load``, ``load_state_dict``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def keyword(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return None if kw is None else getattr(kw.value, "value", "not a constant")


#: loaders that unpickle unless told not to (timm's load_state_dict / load_checkpoint pass
#: weights_only on to torch.load), and pickle itself
TORCH_LOADS = {"torch.load", "torch.serialization.load", "torch.hub.load_state_dict_from_url",
               "load_state_dict_from_url", "load_checkpoint", "load_state_dict",
               "timm.models.load_checkpoint", "timm.models.load_state_dict"}
PICKLES = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load",
           "cloudpickle.load", "cloudpickle.loads"}


def test_every_torch_load_passes_weights_only(fault):
    sources = sorted(p for d in ("core", "plugins", "cli", "registry")
                     for p in (ROOT / d).rglob("*.py"))
    found, bad = 0, []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for name, node in calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in TORCH_LOADS:  # (model.load_state_dict(sd) is an attribute call: not one)
                found += 1
                if keyword(node, "weights_only") is not True:
                    bad.append(f"{where}: {name} without weights_only=True")
            elif name in PICKLES:
                bad.append(f"{where}: {name}")
            elif name == "np.load" and keyword(node, "allow_pickle") not in (None, False):
                bad.append(f"{where}: np.load with allow_pickle")
    # the counts after ": " stay out of the report's staleness key (a new module changes them)
    fault.record(category="untrusted", fault=f"every torch.load / timm load_state_dict call in "
                 f"core, plugins, cli, registry: {found} calls in {len(sources)} files",
                 outcome="all pass weights_only=True; no pickle.load" if not bad else
                 "; ".join(bad))
    assert found >= 2  # rundir.load_state and the teacher's read_state
    assert not bad
