"""A reproduction of DNA's claims on Fashion-MNIST, with dnax, sized to have the power to test them.

Steps; each finished step is skipped, so rerunning the command resumes:

  sample      architectures stratified over the space (cell depths first, then ops), and random
              architectures under the teacher's parameter count -> archs.json
  search      a 28 px EfficientNet teacher, its block supernets, every candidate scored, the best
              student under the budget selected (and, without a pilot, retrained) (dnax
              pipeline) -> search.json, scores.csv
  pilot       (gpu, smoke) PROTOCOL.md's rule: the sample's first architectures x the seeds at
              each E of the ladder until the expected seed-vs-seed τ reaches 0.6; then n from
              the time left, or the run stops before the truth runs -> pilot.json
  matched     (gpu, smoke) random architectures within ±5 % of the student's params -> archs.json
  blocks      per block, candidates across cells trained alone against cached teacher features,
              scored like the supernet -> blocks.csv
  longer      the block supernets trained 3x as long (the same teacher), every candidate scored
              again -> scores-longer.csv
  spos        SPOS baseline: one whole-network supernet, uniform single paths, cross-entropy;
              every architecture's path after BatchNorm recalibration, scored on held-out images
              (val at the cpu scale, as it was run) -> spos.csv
  standalone  every architecture trained from scratch with one recipe and the scale's seeds;
              also the student and the random (cpu: and the teacher) -> standalone.csv
  table       RESULTS.md from the raw files only (rerunning it gives the same file)

    python docs/reproduction/reproduce.py                  # --scale cpu: every step, 2 workers
    python docs/reproduction/reproduce.py --scale smoke    # two minutes: checks the machinery
    python docs/reproduction/reproduce.py --scale gpu      # PROTOCOL.md, on one GPU
    python docs/reproduction/reproduce.py table            # the table again
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The steps live in the package beside this script (docs/reproduction/repro/, one module each).
# Run as `python docs/reproduction/reproduce.py` this folder is on sys.path already; a caller that
# loads the script by its path (tests/integration/test_reproduction.py) needs it added.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from repro import blocks, sample, search, spos, standalone, table
from repro.common import (
    HERE,
    SCALES,
    SEARCH_SEED,
    STEPS,
    Experiment,
    ensure_data,
    now,
    say,
    write_json,
)

# --- main -------------------------------------------------------------------------------------

#: every step but ``table``: (the results folder, the step's state) -> None
RUNNERS: dict[str, Callable[[Experiment, dict[str, Any]], None]] = {
    "sample": sample.step_sample, "search": search.step_search,
    "pilot": standalone.step_pilot, "matched": sample.step_matched,
    "blocks": blocks.step_blocks, "longer": search.step_longer, "spos": spos.step_spos,
    "standalone": standalone.step_standalone}


def spawn_workers(exp: Experiment, args: argparse.Namespace, count: int) -> list[Any]:
    """``count`` more processes that train stand-alone runs while this one runs the search."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "pool", "--scale", exp.scale_name,
           "--results", str(exp.root), "--seed", str(exp.seed), "--device", exp.device,
           "--threads", str(exp.threads or 0)]
    if exp.deadline is not None:
        cmd += ["--until", str(exp.deadline)]
    return [subprocess.Popen([*cmd, "--worker", str(k + 1)]) for k in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", metavar="STEP",
                   help=f"steps to run: {', '.join(STEPS)} (default: all, in order)")
    p.add_argument("--scale", choices=list(SCALES), default="cpu",
                   help="smoke: two minutes; cpu (default): under 2 hours on 2 CPU cores; gpu: "
                        "PROTOCOL.md's confirmatory run on one GPU (deadline 6 minutes)")
    p.add_argument("--results", type=Path, default=None,
                   help="results folder (default: docs/reproduction/results/<scale>)")
    p.add_argument("--table", type=Path, default=None,
                   help="table file (default: <results>/RESULTS.md for smoke, "
                        "docs/reproduction/RESULTS.md for cpu, <results>/RESULTS.md for gpu)")
    p.add_argument("--seed", type=int, default=None,
                   help="the data split's and the search's seed (default: 7 for gpu, "
                        "PROTOCOL.md's; else 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process "
                   "(default: 1 for smoke and cpu, the fastest on shared cores; torch's for gpu)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes training stand-alone networks (default: the scale's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="deadline from now: no new unit of work starts after it (default: the "
                        "scale's; 0 = none)")
    p.add_argument("--until", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [s for s in args.steps if s not in (*STEPS, "pool")]
    if unknown:
        p.error(f"unknown step {unknown[0]!r} (steps: {', '.join(STEPS)})")
    scale = SCALES[args.scale]
    results = args.results or HERE / "results" / args.scale
    threads = args.threads if args.threads is not None else 0 if args.scale == "gpu" else 1
    if threads:
        torch.set_num_threads(threads)
    minutes = scale.minutes if args.minutes is None else args.minutes or None
    deadline = args.until or (time.time() + 60 * minutes if minutes else None)
    seed = SEARCH_SEED.get(args.scale, 0) if args.seed is None else args.seed
    exp = Experiment(results, args.scale, seed, args.device, threads, deadline)
    exp.workers = args.workers
    if args.steps == ["pool"]:  # a worker process (spawned below)
        standalone.pool(exp, {"cut": False}, f"pool {args.worker}")
        return 0
    todo = [s for s in STEPS if s in (args.steps or STEPS)]
    exp.check_settings(write=todo != ["table"])
    workers: list[Any] = []
    t0, complete = time.perf_counter(), True
    try:
        for step in todo:
            if step == "table":
                default = HERE / "RESULTS.md" if args.scale == "cpu" else results / "RESULTS.md"
                table.step_table(exp, args.table or default)
                continue
            if exp.finished(step):
                say(step, "finished earlier, skipped")
                continue
            ensure_data()
            t1 = time.perf_counter()
            with exp.timed(step) as state:
                state["workers"] = workers
                RUNNERS[step](exp, state)
            complete &= not state["cut"]
            stopped = step == "pilot" and scale.pilot_archs and standalone.pilot_epochs(exp) is None
            say(step, "the pilot's rule stopped the run before the truth runs" if stopped else
                f"{'cut by the deadline' if state['cut'] else 'done'} "
                f"({time.perf_counter() - t1:.0f} s)")
            if stopped:
                break
            if step == "sample" and "standalone" in todo and not exp.finished("standalone"):
                workers += spawn_workers(exp, args, (args.workers or scale.workers) - 1)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if len(todo) > 1 and todo[:-1] == list(STEPS[:len(todo) - 1]):  # a whole run: its wall time
        steps = exp.steps()
        record = steps.get("all", {"seconds": 0.0, "sessions": 0})
        record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
        record["sessions"] += 1
        if complete and all(exp.finished(s) for s in STEPS[:-1]):
            record["finished"] = now()
        steps["all"] = record
        write_json(exp.files["steps.json"], steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
