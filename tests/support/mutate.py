"""Mutation check: deliberate bugs, applied one at a time; each must make the suite fail.

    .venv/bin/python tests/support/mutate.py            # every mutation, each with its tests
    .venv/bin/python tests/support/mutate.py --list     # the mutations and the tests run for each
    .venv/bin/python tests/support/mutate.py --only bn-momentum --full   # the whole suite for one

Each mutation replaces one exact piece of source (found exactly once, or the script stops),
runs the tests named for it (``--full``: the whole suite) and restores the file whatever
happens. A mutation the tests do not catch is a hole in the suite: exit 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass

from paths import ROOT


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("bn-momentum", "recalibration BatchNorm momentum 0.1 instead of cumulative",
             "plugins/evaluators/tree.py", "        bn.momentum = None",
             "        bn.momentum = 0.1", ("tests/plugins/evaluators/test_rank.py",)),
    Mutation("candidate-index", "off-by-one when decoding a candidate's ops from its index",
             "plugins/spaces/mbconv.py", "        rest, ops = i - self.starts[c], []",
             "        rest, ops = i - self.starts[c] + 1, []",
             ("tests/plugins/spaces/test_space.py", "tests/plugins/toolkit/test_builder.py")),
    Mutation("adapter-params", "a 1x1 adapter's weights counted in a candidate's params",
             "plugins/costs/params.py",
             "        return float(sum(p.numel() for p in layer.parameters())), out_size(sig)",
             "        return float(sum(p.numel() for p in layer.parameters())\n"
             "                     + (sig.in_chs * sig.in_chs if sig.first else 0)), "
             "out_size(sig)", ("tests/plugins/costs/test_costs.py",)),
    Mutation("wrong-width", "a block's first layer costed for its own cells' width",
             "plugins/costs/common.py",
             "            return tuple(sorted({c.out_chs for c in "
             "ctx.plugins.space.cells(blocks[index - 1])}))",
             "            return tuple(sorted({c.out_chs for c in "
             "ctx.plugins.space.cells(blocks[index])}))",
             ("tests/plugins/costs/test_costs.py", "tests/integration/test_paper_preset.py")),
    Mutation("supernet-width", "the supernet's cells fed the previous block's last cell's width",
             "plugins/spaces/mbconv.py",
             "        prev = self.layout[spec.index - 1][0][1]",
             "        prev = self.layout[spec.index - 1][-1][1]",
             ("tests/plugins/spaces/test_space.py", "tests/plugins/toolkit/test_builder.py")),
    Mutation("distill-teacher-mode", "the distill trainer's teacher in train mode (its targets "
             "from BatchNorm batch statistics)", "plugins/trainers/distill.py",
             "        model = teacher.load(ctx, tres).eval()",
             "        model = teacher.load(ctx, tres).train()",
             ("tests/plugins/trainers/test_distill.py",)),
    Mutation("teacher-train-mode", "the teacher left in train mode (BatchNorm batch statistics)",
             "plugins/teachers/efficientnet.py",
             "        return model.to(ctx.device).eval().requires_grad_(False)",
             "        return model.to(ctx.device).train().requires_grad_(False)",
             ("tests/plugins/teachers/test_teacher.py",)),
    Mutation("budget-strict", "a budget compared with < instead of <= (and no rounding slack)",
             "plugins/selectors/knapsack.py",
             "    feasible = (budgets + tol >= C).all(axis=1)",
             "    feasible = (budgets > C).all(axis=1)",
             ("tests/plugins/selectors/test_select.py",
              "tests/plugins/selectors/test_select_budgets.py")),
    Mutation("budget-strict-pareto", "the front merge's final budget test with <",
             "plugins/selectors/pareto.py",
             "    ok = (co <= budgets).all(axis=1) & np.isfinite(sc) & np.isfinite(co).all(axis=1)",
             "    ok = (co < budgets).all(axis=1) & np.isfinite(sc) & np.isfinite(co).all(axis=1)",
             ("tests/plugins/selectors/test_select.py",)),
    Mutation("float16-sums", "selection sums block scores in float16",
             "plugins/selectors/exact.py",
             "    s = np.asarray(scores, dtype=np.float64)",
             "    s = np.asarray(scores, dtype=np.float16).astype(np.float64)",
             ("tests/plugins/selectors/test_select.py",
              "tests/plugins/selectors/test_select_budgets.py", "tests/integration/test_e2e.py")),
    Mutation("feature-index", "the teacher's block outputs taken one stage late",
             "plugins/teachers/efficientnet.py",
             "                indices=[stages[0], *(s + 1 for s in stages)])",
             "                indices=[stages[0], *(min(s + 2, len(model.blocks)) "
             "for s in stages)])", ("tests/plugins/teachers/test_teacher.py",)),
)


def run(m: Mutation, full: bool) -> tuple[bool, float, str]:
    """Apply ``m``, run its tests, restore; (caught, seconds, last line of pytest)."""
    path = ROOT / m.file
    source = path.read_text()
    if source.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the text to mutate occurs {source.count(m.old)} times in "
                         f"{m.file}; update tests/support/mutate.py")
    path.write_text(source.replace(m.old, m.new))
    try:
        t0 = time.perf_counter()
        args = [] if full else list(m.tests)
        res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                              "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                             text=True)
        lines = [x for x in res.stdout.strip().splitlines() if x.strip()]
        return res.returncode != 0, time.perf_counter() - t0, lines[-1] if lines else ""
    finally:
        path.write_text(source)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--full", action="store_true", help="the whole suite per mutation")
    opts = ap.parse_args()
    chosen = [m for m in MUTATIONS if not opts.only or m.name in opts.only]
    if opts.list:
        for m in chosen:
            print(f"{m.name:22} {m.what}  [{' '.join(m.tests)}]")
        return 0
    missed = []
    for m in chosen:
        caught, seconds, last = run(m, opts.full)
        print(f"{'caught' if caught else 'MISSED':7} {m.name:22} {seconds:6.1f} s  {last}",
              flush=True)
        if not caught:
            missed.append(m.name)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
