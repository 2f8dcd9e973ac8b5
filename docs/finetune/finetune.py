"""What reusing the search's weights saves: four retraining arms at the same selected network.

    python docs/finetune/finetune.py run       # both data sets, 3 seeds each (CPU: about 40 min)
    python docs/finetune/finetune.py table     # docs/finetune.md from the raw files

For each data set the search runs once (``dnax run --until select``); then, from copies of that
run folder, the selected network is retrained in four arms, 3 seeds each (the retrainer's
``seed``: initial weights, data order, augmentation):

* ``scratch``: the ``timm`` retrainer from random weights for E epochs (the current recipe);
* ``scratch-short``: the same for E/4 epochs;
* ``finetune``: the ``finetune`` retrainer (stitched from the supernets, KL from the teacher's
  logits mixed with the labels' cross-entropy) for E/4 epochs;
* ``finetune-labels``: the same without the teacher's logits (``distill = 0``), which separates
  what the weights give from what the distillation gives.

Every arm has the pipeline's own retrainer settings otherwise. Raw results (top-1, the stitched
network's top-1 before fine-tuning, the top-1 after each epoch, the retrain stage's wall time) go
to docs/finetune/results/<data>/<arm>-s<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import dnax

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
SEEDS = (1, 2, 3)
ARMS = ("scratch", "scratch-short", "finetune", "finetune-labels")


def digits() -> tuple[dict[str, Any], int]:
    """The built-in example (its retrainer: 40 epochs), on the CPU; and E."""
    config = tomllib.loads((ROOT / "docs" / "examples" / "digits.toml").read_text())
    config["pipeline"] |= {"device": "cpu"}
    config["retrainer"]["onnx"] = False
    return config, config["retrainer"]["epochs"]


def fashion_mnist() -> tuple[dict[str, Any], int]:
    """The reproduction's 28 px space and teacher (docs/reproduction/reproduce.py), on 6,000
    images per split as its cpu scale; E = 8 epochs."""
    arch = [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s1_e6_c24_se0.25"],
            ["ir_r2_k5_s2_e6_c40_se0.25"], ["ir_r3_k3_s1_e6_c80_se0.25"]]
    recipe = {"batch_size": 64, "lr": 0.004, "weight_decay": 0.05, "label_smoothing": 0.1}
    config = {
        "pipeline": {"name": "fashion-mnist-finetune", "resolution": 28, "seed": 0,
                     "device": "cpu"},
        "data": {"plugin": "fashion_mnist", "limit": 6000},
        "teacher": {"plugin": "efficientnet", "arch_def": arch, "stem_size": 16,
                    "num_features": 320, "epochs": 8, "opt": "adamw", "sched": "cosine",
                    "warmup_epochs": 1, **recipe},
        "space": {"plugin": "mbconv", "preset": "custom", "kernels": [3, 5, 7],
                  "expansions": [3, 6], "stem_size": 16, "stem_stage": arch[0],
                  "num_features": 320,
                  "blocks": [{"cells": [{"depth": d} for d in (1, 2, 3)]} for _ in arch[1:]]},
        "trainer": {"plugin": "distill", "epochs": 3, "batch_size": 64},
        "evaluator": {"plugin": "prefix", "batches": 8, "batch_size": 64},
        "costs": [{"plugin": "params"}, {"plugin": "flops"}],
        "selector": {"plugin": "exact", "budgets": {"params": 160_000}},
        "retrainer": {"plugin": "timm", "recipe": "quick", "epochs": 8, "warmup_epochs": 1,
                      "drop_rate": 0.0, "drop_path_rate": 0.0, "ema_decay": 0.0, **recipe},
    }
    return config, 8


DATA = {"digits": digits, "fashion_mnist": fashion_mnist}


def arm(config: dict[str, Any], name: str, epochs: int, seed: int) -> dict[str, Any]:
    """``config`` with the retrainer of arm ``name`` (E = ``epochs``) and ``seed``."""
    short = max(1, epochs // 4)
    table = {**config["retrainer"], "seed": seed}
    table |= {
        "scratch": {"plugin": "timm", "epochs": epochs},
        "scratch-short": {"plugin": "timm", "epochs": short},
        "finetune": {"plugin": "finetune", "epochs": short, "distill": 0.5,
                     "distill_temperature": 2.0},
        "finetune-labels": {"plugin": "finetune", "epochs": short, "distill": 0.0},
    }[name]
    if table.get("warmup_epochs", 1) >= table["epochs"]:  # the retrainer default: 1
        table["warmup_epochs"] = 0
    return {**config, "retrainer": table}


def run(data: str, out: Path) -> None:
    config, epochs = DATA[data]()
    folder = out / data
    search = folder / "search"
    t0 = time.perf_counter()
    dnax.run_pipeline(config, search, until="select")
    print(f"{data}: search done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for seed in SEEDS:
        for name in ARMS:
            raw = folder / f"{name}-s{seed}.json"
            if raw.exists():
                continue
            where = folder / "runs" / f"{name}-s{seed}"
            shutil.rmtree(where, ignore_errors=True)
            shutil.copytree(search, where, ignore=shutil.ignore_patterns("model"))
            result = dnax.run_pipeline(arm(config, name, epochs, seed), where)
            record = json.loads((where / "stages" / "retrain.json").read_text())
            meta = json.loads((where / "model" / "model.json").read_text())
            metrics = result.results["retrain"].metrics
            raw.write_text(json.dumps({
                "data": data, "arm": name, "seed": seed, "epochs": metrics["epochs"],
                "top1": metrics["top1"], "stitched_top1": metrics.get("stitched_top1"),
                "stitch_max_deviation": metrics.get("stitch_max_deviation"),
                "epoch_top1": [h.get("top1") for h in meta["history"]],
                "seconds": record["seconds"], "params": metrics["params"],
                "arch_def": meta["arch_def"], "stitch": meta.get("stitch"),
                "retrainer": meta["retrainer"]}, indent=1) + "\n")
            shutil.rmtree(where)
            print(f"{data} {name} seed {seed}: top-1 {metrics['top1']:.2f} % "
                  f"({record['seconds']:.0f} s)", flush=True)


def _stat(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "n/a"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(out: Path) -> str:
    lines = ["# Stitch and fine-tune: what reusing the search's weights saves", "",
             "Generated by `python docs/finetune/finetune.py table` from the raw files in "
             "[`finetune/results/`](finetune/results/); made by `python docs/finetune/"
             "finetune.py run` (CPU, one process; its docstring gives the protocol). Top-1 on "
             "the val split, mean ± sd over seeds 1-3 (the retrainer's `seed`); seconds: the "
             "retrain stage's wall time, which includes the final evaluation and, for "
             "`finetune`, loading the supernets and teacher, stitching and the check.", ""]
    for data in DATA:
        rows = [json.loads(p.read_text()) for p in sorted((out / data).glob("*-s*.json"))]
        if not rows:
            continue
        by = {a: [r for r in rows if r["arm"] == a] for a in ARMS}
        e = int(by["scratch"][0]["epochs"]) if by["scratch"] else None
        lines += [f"## {data}", "",
                  f"Selected network: `{rows[0]['arch_def']}` ({rows[0]['params']:,.0f} "
                  f"params); E = {e}.", "",
                  "| arm | epochs | top-1 % | top-1 after epoch 1 % | stitched, before "
                  "training % | seconds | seeds |", "|---|---|---|---|---|---|---|"]
        for a in ARMS:
            rs = by[a]
            if not rs:
                continue
            first = [r["epoch_top1"][0] for r in rs if r["epoch_top1"]
                     and r["epoch_top1"][0] is not None]
            stitched = [r["stitched_top1"] for r in rs if r["stitched_top1"] is not None]
            lines.append(f"| `{a}` | {rs[0]['epochs']:.0f} | {_stat([r['top1'] for r in rs])} "
                         f"| {_stat(first) if first else 'n/a'} | "
                         f"{_stat(stitched) if stitched else '—'} | "
                         f"{_stat([r['seconds'] for r in rs])} | {len(rs)} |")
        lines += ["", reading(by), ""]
    return "\n".join(lines)


def reading(by: dict[str, list[dict[str, Any]]]) -> str:
    """A plain reading from the numbers: does fine-tuning reach from-scratch accuracy, and
    what do the weights and the distillation each give?"""
    mean = {a: statistics.mean(r["top1"] for r in rs) for a, rs in by.items() if rs}
    secs = {a: statistics.mean(r["seconds"] for r in rs) for a, rs in by.items() if rs}
    sd = {a: statistics.stdev(r["top1"] for r in rs) if len(rs) > 1 else 0.0
          for a, rs in by.items() if rs}
    if not {"scratch", "finetune", "scratch-short", "finetune-labels"} <= mean.keys():
        return "Reading: not every arm has results yet."
    gap = mean["finetune"] - mean["scratch"]
    weights = mean["finetune-labels"] - mean["scratch-short"]
    noise = max(sd["finetune"], sd["scratch"])
    verdict = ("reaches" if gap >= -noise else "does not reach")
    return (f"Reading: stitched + fine-tuned for E/4 epochs {verdict} the from-scratch "
            f"accuracy of E epochs ({mean['finetune']:.2f} % against {mean['scratch']:.2f} %, "
            f"{gap:+.2f} points; the larger seed sd is {noise:.2f}) in "
            f"{secs['finetune'] / secs['scratch']:.0%} of its wall time. At the same E/4 "
            f"epochs the supernets' weights give {weights:+.2f} points over random ones "
            "(labels only), and the teacher's logits "
            f"{mean['finetune'] - mean['finetune-labels']:+.2f} more.")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "table"))
    parser.add_argument("--data", choices=(*DATA, "all"), default="all")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "finetune.md")
    args = parser.parse_args(argv)
    if args.what == "run":
        import torch

        torch.set_num_threads(1)
        for data in DATA if args.data == "all" else (args.data,):
            run(data, args.out)
    args.doc.write_text(table(args.out) + "\n")
    print(f"written: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
