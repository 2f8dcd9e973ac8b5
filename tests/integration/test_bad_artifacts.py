"""Bad artefacts in a run directory: truncated files, another format version, another space or
block, a changed config. Each gives one clear error line (``dnax run`` exits 2) or a recompute of
exactly the stages it affects; never a silent reuse."""

from __future__ import annotations

import json
import shutil

import faultkit
import pytest
import torch

import dnax

pytest_plugins = ["reliability"]

pytestmark = pytest.mark.slow  # every test runs dnax over a run folder (pipelines, damage)


@pytest.fixture(autouse=True)
def _torch():
    with faultkit.torch_settings():
        yield


def copy_run(ref, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ref.run_dir, run_dir)
    return run_dir


def record_as_written(run_dir, rel):
    """Make ``rel`` as it is now the file its stage's record lists (size and sha256)."""
    from dnax.runner import sha256

    for record_path in (run_dir / "stages").glob("*.json"):
        if record_path.relative_to(run_dir).as_posix() == rel:
            continue  # the damaged file is a record itself
        record = json.loads(record_path.read_text())
        if rel in record.get("files", {}):
            path = run_dir / rel
            record["files"][rel] = f"{path.stat().st_size}:{sha256(path)}"
            record_path.write_text(json.dumps(record))


# --- damages ----------------------------------------------------------------------------------


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_meta(**changes):
    def damage(path):
        from safetensors.torch import save_file

        tensors, meta = dnax.load_safetensors(path)
        save_file(tensors, path, metadata={**meta, **changes})

    return damage


def other_block(path):
    """The block spec in a supernet's metadata made another one (its tensors untouched)."""
    _, meta = dnax.load_safetensors(path)
    spec = json.loads(meta["block"])
    set_meta(block=json.dumps({**spec, "out_size": spec["out_size"] * 2}))(path)


def set_json(**changes):
    def damage(path):
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return damage


#: (fault, file, damage, `dnax run` options that make a stage read it, words of the error)
ERRORS = [
    ("supernet truncated", "supernets/block0.safetensors", truncate, ["--force", "rank"],
     "not a readable safetensors file"),
    ("supernet of another format version", "supernets/block1.safetensors",
     set_meta(format_version="99"), ["--force", "rank"], "format version 99, this dnax reads 1"),
    ("supernet of another artefact kind", "supernets/block0.safetensors",
     set_meta(format="ranking"), ["--force", "rank"], "expected a dnax 'supernet' artefact"),
    ("supernet of another search space (space_hash)", "supernets/block0.safetensors",
     set_meta(space_hash="0123456789abcdef"), ["--force", "rank"],
     "space_hash is '0123456789abcdef', the pipeline expects"),
    ("supernet of another block (block spec in its metadata)", "supernets/block1.safetensors",
     other_block, ["--force", "rank"], "was trained for another block"),
    ("teacher weights truncated", "teacher/teacher.safetensors", truncate, ["--force", "rank"],
     "not a readable safetensors file"),
    ("ranking scores truncated", "rankings/block0.safetensors", truncate, ["--force", "select"],
     "not a readable safetensors file"),
    ("ranking table truncated", "rankings/block1.json", truncate, ["--force", "select"],
     "not valid JSON"),
    ("ranking table of another format version", "rankings/block0.json",
     set_json(format_version=99), ["--force", "select"], "format version 99"),
    ("stage record truncated", "stages/select.json", truncate, [], "not valid JSON"),
    ("stage record of another format version", "stages/train.json",
     set_json(format_version=2), [], "format version 2, this dnax reads 1"),
]


@pytest.mark.parametrize(("name", "rel", "damage", "args", "words"), ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_damaged_artefact_is_one_error_line(tiny_reference, tmp_path, fault, name, rel, damage,
                                            args, words):
    """The loaders' own checks: the damage is recorded as the stage's output (as if a writer had
    made it), so the runner's integrity check passes and the stage that reads the file sees it."""
    run_dir = copy_run(tiny_reference, tmp_path)
    damage(run_dir / rel)
    record_as_written(run_dir, rel)
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir, *args])
    lines = res.stderr.strip().splitlines()
    how = f"`dnax run {' '.join(args)}`".replace(" `", "`")
    if "another block" in name:
        fault.note("bad artefact", "Found and fixed (plugins/evaluators/prefix.py): a supernet "
                   "whose metadata names another block was loaded when its shapes fit; the "
                   "evaluator now compares the block spec.")
    fault.record(category="bad artefact", fault=f"{name} ({rel}), then {how}",
                 outcome=f"exit {res.exit_code}, one line: {words}" if res.exit_code == 2
                 and len(lines) == 1 else f"exit {res.exit_code}, {len(lines)} lines")
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith(f"error: {run_dir / rel}: ") and words in lines[0], lines[0]


# --- resume states of an interrupted stage ----------------------------------------------------


def interrupted_train(ref, tmp_path):
    """The run directory as a killed supernet training leaves it: teacher done, the train stage
    started with its supernets/resume.pt."""
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "train")
    shutil.copytree(ref.run_dir / "supernets", run_dir / "supernets")
    shutil.copy2(ref.run_dir / "stages/train.started.json", run_dir / "stages")
    return run_dir


def edit_state(**changes):
    def damage(path):
        state = torch.load(path, weights_only=True)
        state.pop("format_version")
        dnax.RunDir(path.parent).save_state(path.name, {**state, **changes})

    return damage


RESUME_ERRORS = [
    ("resume state truncated", truncate, "cannot load resume state"),
    ("resume state of another format version", edit_state(format_version=7),
     "format version 7, this dnax reads 1"),
    ("resume state of another search space", edit_state(space_hash="0123456789abcdef"),
     "made for another space or teacher"),
    ("resume state of other blocks", edit_state(blocks="[]"), "made for another space or teacher"),
]


@pytest.mark.parametrize(("name", "damage", "words"), RESUME_ERRORS,
                         ids=[e[0] for e in RESUME_ERRORS])
def test_damaged_resume_state_is_one_error_line(tiny_reference, tmp_path, fault, name, damage,
                                                words):
    run_dir = interrupted_train(tiny_reference, tmp_path)
    rel = "supernets/resume.pt"
    damage(run_dir / rel)
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir, "--until", "train"])
    lines = res.stderr.strip().splitlines()
    fault.record(category="bad artefact", fault=f"{name} ({rel}) of an interrupted training",
                 outcome=f"exit {res.exit_code}, one line: {words}" if res.exit_code == 2
                 and len(lines) == 1 else f"exit {res.exit_code}, {len(lines)} lines")
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith(f"error: {run_dir / rel}: ") and words in lines[0], lines[0]


def test_foreign_retrain_state_is_retrained_from_scratch(tiny_reference, tmp_path, fault):
    ref = tiny_reference
    run_dir = tmp_path / "run"
    faultkit.keep_until(ref.run_dir, run_dir, "retrain")
    shutil.copy2(ref.run_dir / "stages/retrain.started.json", run_dir / "stages")
    dnax.RunDir(run_dir).save_state("model/resume.pt", {"fingerprint": "0123456789abcdef",
                                                        "epoch": 2})
    res = faultkit.cli(["run", ref.toml, "--run-dir", run_dir])
    diffs = faultkit.differences(ref.artefacts, faultkit.artefacts(run_dir))
    fault.record(category="bad artefact", fault="retrain resume state of another network "
                 "(model/resume.pt fingerprint)", outcome="logged and retrained from scratch; "
                 "artefacts bit-identical to an uninterrupted run" if not diffs else
                 f"exit {res.exit_code}; differs: {diffs[:2]}")
    assert res.exit_code == 0, res.output
    assert "made for another network or recipe; retraining from scratch" in res.stdout
    assert not diffs


# --- a changed config -------------------------------------------------------------------------


CHANGES = [
    ("pipeline.name", {"pipeline": {"name": "renamed"}}, ()),
    ("retrainer.epochs", {"retrainer": {"epochs": 2}}, ("retrain",)),
    ("selector.top_k", {"selector": {"top_k": 3}}, ("select", "retrain")),
    ("trainer.lr", {"trainer": {"lr": [0.004]}}, ("train", "rank", "select", "retrain")),
]


@pytest.mark.parametrize(("key", "change", "rerun"), CHANGES, ids=[c[0] for c in CHANGES])
def test_changed_config_reruns_exactly_the_affected_stages(tiny_reference, tmp_path, fault, key,
                                                           change, rerun):
    run_dir = copy_run(tiny_reference, tmp_path)
    kept = {s: faultkit.snapshot(run_dir / f) for s in faultkit.STAGES if s not in rerun
            for f in faultkit.FOLDERS[s] if (run_dir / f).is_dir()}
    toml = faultkit.write_pipeline(tmp_path / "changed.toml", faultkit.pipeline(**change))
    if rerun:  # without --rerun (or --force) a changed finished stage stops the run
        before = faultkit.snapshot(run_dir)
        res = faultkit.cli(["run", toml, "--run-dir", run_dir])
        assert res.exit_code == 2 and f"since the {rerun[0]} stage finished" in res.stderr
        assert faultkit.snapshot(run_dir) == before
    res = faultkit.cli(["run", toml, "--run-dir", run_dir, "--rerun"])
    got = faultkit.ran(res.stdout)
    want = {s: "run" if s in rerun else "reused" for s in faultkit.STAGES}
    touched = [stage for stage, before in kept.items() if before != {
        k: v for f in faultkit.FOLDERS[stage] if (run_dir / f).is_dir()
        for k, v in faultkit.snapshot(run_dir / f).items()}]
    again = [s for s in faultkit.STAGES if got.get(s) == "run"]
    fault.record(category="bad artefact", fault=f"config changed: {key}",
                 outcome=("refused without --rerun (nothing changed); with it " if rerun
                          else "") + f"re-ran {', '.join(again) or 'nothing'}; the other "
                 "stages' files " + (f"CHANGED: {touched}" if touched else "untouched"))
    assert res.exit_code == 0, res.output
    assert got == want
    assert not touched


def test_changed_config_never_resumes_the_old_partial_stage(tiny_reference, tmp_path, fault):
    """Supernet training interrupted under one config, resumed under another: the old resume
    state and supernets are discarded and training starts from step 1."""
    run_dir = interrupted_train(tiny_reference, tmp_path)
    toml = faultkit.write_pipeline(tmp_path / "changed.toml",
                                   faultkit.pipeline(trainer={"lr": [0.004]}))
    res = faultkit.cli(["run", toml, "--run-dir", run_dir, "--until", "train"])
    new, old = faultkit.artefacts(run_dir), tiny_reference.artefacts
    anew = all(faultkit.differences({rel: old[rel]}, {rel: new[rel]})
               for rel in ("supernets/block0.safetensors", "supernets/block1.safetensors"))
    resumed = "resuming" in res.stdout
    fault.record(category="bad artefact", fault="config changed (trainer.lr) while supernet "
                 "training was interrupted", outcome="old resume state REUSED" if resumed else
                 "old resume state and supernets discarded; trained from step 1")
    assert res.exit_code == 0, res.output
    assert not resumed and anew


def test_damaged_model_is_refused_by_load_model(tiny_reference, tmp_path, fault):
    run_dir = copy_run(tiny_reference, tmp_path)
    model = run_dir / "model"
    truncate(model / "model.safetensors")
    with pytest.raises(dnax.ArtifactError) as e:
        dnax.load_model(model)
    (model / "model.safetensors").write_bytes(
        (tiny_reference.run_dir / "model/model.safetensors").read_bytes())
    set_json(format_version=3)(model / "model.json")
    with pytest.raises(dnax.ArtifactError) as e2:
        dnax.load_model(model)
    fault.record(category="bad artefact", fault="model.safetensors truncated / model.json of "
                 "another format version, then dnax.load_model", outcome="ArtifactError: "
                 "one line naming the file", cases=2)
    for err, name in ((e.value, "model.safetensors"), (e2.value, "model.json")):
        assert len(err.problems) == 1 and "\n" not in err.problems[0]
        assert err.problems[0].startswith(f"{model / name}: ")


# --- a finished stage's artefacts are checked before the stage is skipped -------------------


@pytest.mark.parametrize("rel", ["supernets/block0.safetensors", "rankings/block1.safetensors",
                                 "model/model.safetensors"])
def test_damaged_artefact_of_a_finished_run_is_not_reused_silently(tiny_reference, tmp_path,
                                                                   fault, rel):
    run_dir = copy_run(tiny_reference, tmp_path)
    truncate(run_dir / rel)
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir])
    got = faultkit.ran(res.stdout)
    stage = next(s for s, fs in faultkit.FOLDERS.items() if rel.split("/")[0] in fs)
    lines = res.stderr.strip().splitlines()
    fault.note("bad artefact", "A stage's record (stages/STAGE.json) lists its files with size "
               "and SHA-256; a finished stage is reused only while they are unchanged, else "
               "`dnax run` stops with one line naming the file and the stage to --force.")
    fault.record(category="bad artefact", fault=f"{rel} truncated after the run finished, then "
                 "`dnax run` again", outcome=f"exit {res.exit_code}: "
                 + (lines[0].split(": ", 2)[-1] if lines else "no error"))
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0] == (f"error: {run_dir / rel}: changed since the {stage} stage finished; "
                        f"restore it, or re-run with --force {stage}")
    assert stage not in got and all(v == "reused" for v in got.values())  # stopped there
    res = faultkit.cli(["run", tiny_reference.toml, "--run-dir", run_dir, "--force", stage])
    assert res.exit_code == 0, res.output  # --force recomputes it
