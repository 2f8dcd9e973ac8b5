"""The runner: stage order, resume by hash, --force, artefacts, hooks, library API."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

import dnax
from dnax.registry import Registry
from dnax.rundir import RunDir, atomic_write
from standins import CALLS, PIPELINE, StandinPlugin


class Recorder:
    def __init__(self):
        self.events = []

    @dnax.hookimpl
    def dnax_pipeline_start(self, config, run_dir):
        self.events.append("pipeline_start")

    @dnax.hookimpl
    def dnax_stage_end(self, stage, run_dir, result, skipped, seconds):
        self.events.append(f"{stage}:{'skip' if skipped else 'run'}")

    @dnax.hookimpl
    def dnax_block_trained(self, block, epoch, losses, final):
        self.events.append(f"trained{block.index}")

    @dnax.hookimpl
    def dnax_block_ranked(self, block, ranking):
        self.events.append(f"ranked{block.index}:{len(ranking.candidates)}")

    @dnax.hookimpl
    def dnax_selection_made(self, selection):
        self.events.append("selected")

    @dnax.hookimpl
    def dnax_pipeline_end(self, config, run_dir, results):
        self.events.append("pipeline_end")


def test_full_run_then_resume_skips_everything(registry, pipeline, tmp_path):
    rec = Recorder()
    registry.pm.register(rec)
    run = dnax.run_pipeline(pipeline, tmp_path / "r", registry=registry)
    assert rec.events == ["pipeline_start", "teacher:run", "trained0", "trained1", "train:run",
                          "ranked0:4", "ranked1:4", "rank:run", "selected", "select:run",
                          "retrain:run", "pipeline_end"]
    assert set(run.results) == {"teacher", "train", "rank", "select", "retrain"}
    sel = run.selection
    assert sel.costs["params"] <= 116
    assert sel.arch_def[0] == ("ds_r1_k3_s1_c8",) and sel.model_kwargs == {"stem_size": 8}
    # exactly the brute-force optimum of the stored rankings
    r0, r1 = run.ranking(0), run.ranking(1)
    # the select stage's costs come back with the rankings (for `dnax inspect`)
    assert run.fixed_costs == {"params": 100.0}
    assert list(r1.costs["params"]) == [sum(int(a[7]) for a in c.arch) for c in r1.candidates]
    best = min((r0.scores["nmae"][i] + r1.scores["nmae"][j], (i, j))
               for i in range(4) for j in range(4)
               if 100 + sum(int(a[7]) for a in r0.candidates[i].arch + r1.candidates[j].arch)
               <= 116)
    assert sel.candidates == best[1]
    rec.events.clear()
    dnax.run_pipeline(pipeline, tmp_path / "r", registry=registry)
    assert rec.events[1:-1] == ["teacher:skip", "train:skip", "rank:skip", "select:skip",
                                "retrain:skip"]
    assert dict(CALLS) == {"teacher": 1, "train": 1, "rank": 1, "select": 1, "retrain": 1}


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_change_reruns_that_stage_and_all_after_it(registry, pipeline, tmp_path):
    dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    CALLS.clear()
    before = _hashes(tmp_path)
    pipeline["evaluator"]["seed"] = 1
    with pytest.raises(dnax.ConfigError) as e:  # a changed finished stage needs consent
        dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    assert str(e.value) == (
        "$.evaluator.seed changed (0 -> 1) since the rank stage finished; that redoes rank, "
        "select, retrain: re-run with --force rank (or --rerun), restore the config, or use "
        "another --run-dir")
    assert dict(CALLS) == {} and _hashes(tmp_path) == before
    dnax.run_pipeline(pipeline, tmp_path, registry=registry, rerun=True)
    assert dict(CALLS) == {"rank": 1, "select": 1, "retrain": 1}
    assert not (tmp_path / ".redo").exists()  # swapped in, nothing left aside
    CALLS.clear()
    pipeline["pipeline"]["name"] = "renamed"  # name and device do not invalidate results
    pipeline["pipeline"]["device"] = "cpu"
    dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    assert dict(CALLS) == {}
    pipeline["pipeline"]["seed"] = 7
    dnax.run_pipeline(pipeline, tmp_path, registry=registry, force="teacher")
    assert dict(CALLS) == {"teacher": 1, "train": 1, "rank": 1, "select": 1, "retrain": 1}


def test_force_reruns_from_a_stage(registry, pipeline, tmp_path):
    dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    CALLS.clear()
    dnax.run_pipeline(pipeline, tmp_path, registry=registry, force="select")
    assert dict(CALLS) == {"select": 1, "retrain": 1}
    with pytest.raises(dnax.ConfigError, match="--force: unknown stage 'selct'"):
        dnax.run_pipeline(pipeline, tmp_path, registry=registry, force="selct")


def test_until_and_partial_pipelines(registry, pipeline, tmp_path):
    dnax.run_pipeline(pipeline, tmp_path / "a", registry=registry, until="train")
    assert dict(CALLS) == {"teacher": 1, "train": 1}
    for key in ("retrainer", "selector", "costs", "evaluator"):
        del pipeline[key]
    run = dnax.run_pipeline(pipeline, tmp_path / "b", registry=registry)
    assert set(run.results) == {"teacher", "train"}


def test_a_failed_stage_keeps_earlier_results_and_resumes(registry, pipeline, tmp_path):
    pipeline["trainer"]["fail_at_block"] = 1
    with pytest.raises(RuntimeError, match="stand-in failure"):
        dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    rd = RunDir(tmp_path)
    assert rd.exists("stages/teacher.json") and not rd.exists("stages/train.json")
    # block 0's artefact written before the failure stays for the stage to resume from
    assert rd.exists("supernets/block0.safetensors")
    del pipeline["trainer"]["fail_at_block"]  # a changed config: the stage starts clean
    CALLS.clear()
    dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    assert CALLS["teacher"] == 0 and CALLS["train"] == 1


def test_resolved_config_and_report_are_written(registry, pipeline, tmp_path):
    run = dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    assert written["trainer"] == {"plugin": "standin", "epochs": 1, "mode": "fast"}
    assert written["selector"]["budgets"] == {"params": 116.0}
    assert run.report["student"] == {"top1": 0.9}
    assert set(run.report["stages"]) == {"teacher", "train", "rank", "select", "retrain"}
    assert json.loads((tmp_path / "selection.json").read_text())["format"] == "selection"
    assert dnax.load_run(tmp_path).selection == run.selection
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(dnax.ArtifactError, match="not a dnax run directory"):
        dnax.load_run(tmp_path)


def test_artefact_of_another_format_version_is_refused(registry, pipeline, tmp_path):
    dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    path = tmp_path / "stages" / "rank.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(dnax.ArtifactError, match="format version 99"):
        dnax.run_pipeline(pipeline, tmp_path, registry=registry)


def test_truncated_safetensors_is_refused(registry, pipeline, tmp_path):
    run = dnax.run_pipeline(pipeline, tmp_path, registry=registry)
    path = tmp_path / "rankings" / "block0.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(dnax.ArtifactError, match="not a readable safetensors file"):
        run.ranking(0)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as f:
        f.write("new, half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_resume_state_refuses_pickled_objects(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "resume.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(dnax.ArtifactError, match="cannot load resume state"):
        RunDir(tmp_path).load_state("resume.pt")


def test_plan_counts_candidates(registry, pipeline):
    plan = dnax.plan(pipeline, registry)
    assert [b.num_candidates for b in plan.blocks] == [4, 4]
    assert plan.num_networks == 16
    assert plan.to_json()["blocks"][1]["in_chs"] == 16


def test_a_changed_file_changes_the_digest_that_stage_hashes_fold_in(tmp_path):
    from attrs import frozen

    from dnax.runner import file_digests

    @frozen
    class Config:
        table: Path
        folder: Path
        name: str = "latency.json"

    f = tmp_path / "table.json"
    f.write_text("1")
    before = file_digests(Config(f, tmp_path))
    f.write_text("2")
    after = file_digests(Config(f, tmp_path))
    assert set(before) == {"table"} and before != after  # folders and strings are not hashed


def _dist_worker(rank, run_dir, port, out):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    registry = Registry.create(entry_points=False, plugins=[StandinPlugin()])
    rec = Recorder()
    registry.pm.register(rec)
    pipeline = dict(PIPELINE, pipeline={**PIPELINE["pipeline"], "device": "cpu"})
    dnax.runner.run(dnax.load_pipeline(pipeline, registry), registry, run_dir)
    (Path(out) / f"events{rank}.json").write_text(json.dumps(rec.events))


@pytest.mark.slow
def test_two_processes_run_the_pipeline_hooks_on_process_0_only(tmp_path):
    """torchrun-style (gloo): both processes run every stage; observers hear each event once."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(str(tmp_path / "run"), port, str(tmp_path)), nprocs=2)
    events0 = json.loads((tmp_path / "events0.json").read_text())
    assert events0[0] == "pipeline_start" and events0[-1] == "pipeline_end"
    assert "selected" in events0
    assert json.loads((tmp_path / "events1.json").read_text()) == []
    single = dnax.run_pipeline(dict(PIPELINE), tmp_path / "single",
                               registry=Registry.create(entry_points=False,
                                                        plugins=[StandinPlugin()]))
    assert dnax.load_run(tmp_path / "run").selection == single.selection


def test_stage_context_calls_one_plugin_outside_the_runner(registry, pipeline, tmp_path):
    run = dnax.run_pipeline(pipeline, tmp_path / "r", registry=registry)
    ctx = dnax.stage_context(pipeline, tmp_path / "r", "retrain", registry=registry)
    assert set(ctx.results) == set(run.results) and ctx.device == "cpu"
    ctx.log("quiet: no observer is called")
    result = ctx.plugins.retrainer.retrain(ctx, run.selection)
    assert result == run.results["retrain"]
    fresh = dnax.stage_context(pipeline, tmp_path / "empty", "teacher", registry=registry)
    assert fresh.results == {}


def test_every_plugin_kind_is_hashed_into_one_stage():
    """Each kind's table feeds exactly one stage's hash, and a stage's own kind feeds its own."""
    from dnax.interfaces import PLUGIN_KINDS
    from dnax.runner import STAGES

    for kind in PLUGIN_KINDS:
        assert len([s for s in STAGES if kind.name in s.tables]) == 1, kind.name
    assert [k.stage for k in PLUGIN_KINDS if k.stage] == [s.name for s in STAGES]
    for kind in PLUGIN_KINDS:
        if kind.stage:
            assert kind.name in next(s for s in STAGES if s.name == kind.stage).tables


class _BareSelection:
    """A selector written against the old contract: no arch_def in its Selection."""

    @dnax.hookimpl
    def dnax_register_selectors(self, register):
        from standins import StandinSelector

        class Bare(StandinSelector):
            def select(self, ctx, rankings, fixed_costs):
                full = super().select(ctx, rankings, fixed_costs)
                return dnax.Selection(full.candidates, full.score, full.costs, full.budgets)

        register("bare", Bare)


def test_a_selection_without_arch_def_is_refused_and_nothing_after_it_runs(pipeline, tmp_path):
    reg = Registry.create(entry_points=False, plugins=[StandinPlugin(), _BareSelection()])
    pipeline["selector"]["plugin"] = "bare"
    with pytest.raises(dnax.PluginError) as e:
        dnax.run_pipeline(pipeline, tmp_path, registry=reg)
    assert str(e.value).startswith("$.selector: Bare.select returned Selection without an "
                                   "arch_def")
    rd = RunDir(tmp_path)
    assert rd.exists("stages/rank.json") and not rd.exists("stages/select.json")
    assert not rd.exists("selection.json") and CALLS["retrain"] == 0


class _Evaluators:
    """Evaluators that store rankings the old way (``ctx.run_dir.save_ranking``, block 1 only
    with ``mixed``) or with one entry too few."""

    @dnax.hookimpl
    def dnax_register_evaluators(self, register):
        from standins import StandinEvaluator

        class Old(StandinEvaluator):
            mixed = False

            def rank(self, ctx):
                refs = []
                for spec in ctx.results["teacher"].blocks:
                    cands = tuple(ctx.plugins.space.candidates(spec))
                    r = dnax.BlockRanking(spec.index, cands, {"nmae": np.arange(len(cands)) / 8})
                    save = ctx.save_ranking if self.mixed and spec.index == 0 \
                        else ctx.run_dir.save_ranking  # the run directory's own: no hook fired
                    refs.append(save(r))
                return dnax.RankResult(tuple(refs))

        class Mixed(Old):
            mixed = True

        class Short(StandinEvaluator):
            def rank(self, ctx):
                spec = ctx.results["teacher"].blocks[0]
                cands = tuple(ctx.plugins.space.candidates(spec))
                ctx.save_ranking(dnax.BlockRanking(spec.index, cands,
                                                   {"nmae": np.zeros(len(cands) - 1)}))

        register("old", Old)
        register("mixed", Mixed)
        register("short", Short)


@pytest.mark.parametrize("plugin", ["old", "mixed"])
def test_rankings_stored_the_old_way_still_reach_the_observers_once(plugin, pipeline, tmp_path):
    reg = Registry.create(entry_points=False, plugins=[StandinPlugin(), _Evaluators()])
    rec = Recorder()
    reg.pm.register(rec)
    pipeline["evaluator"]["plugin"] = plugin
    run = dnax.run_pipeline(pipeline, tmp_path, registry=reg)
    ranked = [e for e in rec.events if e.startswith("ranked")]
    assert ranked == ["ranked0:4", "ranked1:4"]
    assert rec.events.index("ranked1:4") < rec.events.index("rank:run")
    assert run.selection.arch_def


def test_a_ranking_without_one_entry_per_candidate_is_refused_before_it_is_written(
        pipeline, tmp_path):
    reg = Registry.create(entry_points=False, plugins=[StandinPlugin(), _Evaluators()])
    pipeline["evaluator"]["plugin"] = "short"
    with pytest.raises(dnax.PluginError) as e:
        dnax.run_pipeline(pipeline, tmp_path, registry=reg)
    assert str(e.value) == ("$.evaluator: Short stored block 0's 'nmae' with 3 entries for 4 "
                            "candidates")
    rd = RunDir(tmp_path)
    assert not rd.exists("rankings/block0.safetensors") and not rd.exists("stages/rank.json")
