"""Small stand-in plugins for the kernel's tests: real digits images, trivial models, and a
record of which stages ran. They follow the interfaces; they are not shipped."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Literal

import numpy as np
import torch
from attrs import field, frozen

import dnax

CALLS: Counter[str] = Counter()


@frozen
class DigitsConfig:
    limit: int = field(default=200, validator=dnax.positive, metadata={"help": "images used"})


class StandinDigits(dnax.DataSource):
    """sklearn's digits as 3-channel tensors."""

    Config = DigitsConfig

    @property
    def num_classes(self) -> int:
        return 10

    def dataset(self, split, data_config, *, augment=False):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images[: self.config.limit], dtype=torch.float32)[:, None] / 16
        y = torch.tensor(d.target[: self.config.limit])
        return torch.utils.data.TensorDataset(x.expand(-1, 3, -1, -1), y)


@frozen
class TeacherConfig:
    blocks: int = field(default=2, validator=dnax.positive, metadata={"help": "searched blocks"})
    width: int = field(default=8, validator=dnax.positive, metadata={"help": "channels"})


class StandinTeacher(dnax.Teacher):
    """A teacher whose blocks are halving convs (not trained)."""

    Config = TeacherConfig

    def blocks(self, resolution):
        w, size = self.config.width, resolution
        out = []
        for i in range(self.config.blocks):
            out.append(dnax.BlockSpec(i, i + 1, w * (i + 1), w * (i + 2), 2, size, size // 2))
            size //= 2
        return tuple(out)

    def data_config(self, resolution):
        return dnax.DataConfig((3, resolution, resolution), (0.5,) * 3, (0.5,) * 3)

    def prepare(self, ctx):
        CALLS["teacher"] += 1
        ctx.run_dir.save_tensors("teacher/teacher.safetensors", {"w": torch.ones(3)},
                                 kind="teacher")
        ctx.progress("teacher", 1, 1)
        return dnax.TeacherResult("standin", "teacher/teacher.safetensors",
                                  ctx.plugins.data.num_classes, self.blocks(ctx.resolution),
                                  self.data_config(ctx.resolution), {"top1": 0.5})

    def load(self, ctx, result):
        return torch.nn.Identity()

    def block_features(self, model, images):
        return [images]


@frozen
class SpaceConfig:
    depth: int = field(default=2, validator=dnax.positive, metadata={"help": "layers per cell"})
    kernels: tuple[int, ...] = field(default=(3, 5), metadata={"help": "kernel choices"})


class StandinSpace(dnax.SearchSpace):
    """One cell per block, ``depth`` layers choosing a kernel."""

    Config = SpaceConfig

    def cells(self, block):
        ops = tuple(f"k{k}" for k in self.config.kernels)
        return (dnax.CellSpec(0, self.config.depth, block.out_chs, ops),)

    def candidates(self, block):
        n = len(self.config.kernels)
        return [dnax.Candidate(block.index, i, 0, ops,
                               tuple(f"ir_r1_k{self.config.kernels[o]}_s1_e1_c{block.out_chs}"
                                     for o in ops))
                for i, ops in enumerate(itertools.product(range(n), repeat=self.config.depth))]

    def build_supernet(self, block):
        return torch.nn.Identity()

    def arch_def(self, blocks, chosen):
        return [["ds_r1_k3_s1_c8"], *[list(c.arch) for c in chosen]]

    def model_kwargs(self):
        return {"stem_size": 8}

    def fingerprint(self):
        return "standin"


@frozen
class TrainerConfig:
    epochs: int = field(default=1, validator=dnax.positive, metadata={"help": "epochs"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "how"})
    fail_at_block: int | None = field(default=None, metadata={"help": "raise here (tests)"})


class StandinTrainer(dnax.BlockTrainer):
    """Stores one tensor per block, fires the block hooks."""

    Config = TrainerConfig

    def train(self, ctx):
        CALLS["train"] += 1
        blocks = []
        for spec in ctx.results["teacher"].blocks:
            if spec.index == self.config.fail_at_block:
                raise RuntimeError("stand-in failure")
            rel = f"supernets/block{spec.index}.safetensors"
            ctx.run_dir.save_tensors(rel, {"w": torch.full((2,), float(spec.index))},
                                     kind="supernet", metadata={"space_hash": "standin"})
            ctx.hook.dnax_block_trained(block=spec, epoch=self.config.epochs,
                                        losses={"loss": 0.1}, final=True)
            blocks.append(dnax.BlockCheckpoint(spec.index, rel, self.config.epochs, 1, 0.1))
        return dnax.TrainResult(tuple(blocks))


@frozen
class EvaluatorConfig:
    seed: int = field(default=0, metadata={"help": "score seed"})


class StandinEvaluator(dnax.Evaluator):
    """Seeded scores per candidate."""

    Config = EvaluatorConfig

    def rank(self, ctx):
        CALLS["rank"] += 1
        rng = np.random.default_rng(self.config.seed)
        refs = []
        for spec in ctx.results["teacher"].blocks:
            cands = ctx.plugins.space.candidates(spec)
            s = rng.random(len(cands)).astype(np.float32)
            refs.append(ctx.save_ranking(
                dnax.BlockRanking(spec.index, tuple(cands), {"nmae": s, "mse": s * 2})))
        return dnax.RankResult(tuple(refs))


@frozen
class CostConfig:
    base: float = field(default=100.0, metadata={"help": "fixed cost"})


class StandinParams(dnax.CostModel):
    """Kernel size summed over layers."""

    Config = CostConfig
    metric = "params"

    def candidate_costs(self, ctx, block, candidates):
        return np.array([sum(int(a.split("_k")[1][0]) for a in c.arch) for c in candidates],
                        dtype=np.float64)

    def fixed_cost(self, ctx, blocks):
        return self.config.base


@frozen
class SelectorConfig:
    budgets: dict[str, float] = field(factory=dict, metadata={"help": "metric -> budget"})


class StandinSelector(dnax.Selector):
    """Brute force over every network."""

    Config = SelectorConfig

    def select(self, ctx, rankings, fixed_costs):
        CALLS["select"] += 1
        best = None
        for choice in itertools.product(*(range(len(r.candidates)) for r in rankings)):
            picked = list(zip(rankings, choice, strict=True))
            costs = {m: fixed_costs[m] + sum(r.costs[m][i] for r, i in picked)
                     for m in fixed_costs}
            if any(costs[m] > b for m, b in self.config.budgets.items()):
                continue
            score = float(sum(r.scores["nmae"][i] for r, i in picked))
            if best is None or score < best[0]:
                best = (score, choice, costs)
        if best is None:
            raise dnax.NoFeasibleNetworkError("no network fits")
        return self.selection(ctx, rankings, best[1], best[0], best[2], self.config.budgets)


@frozen
class RetrainerConfig:
    epochs: int = field(default=1, validator=dnax.positive, metadata={"help": "epochs"})


class StandinRetrainer(dnax.Retrainer):
    """Writes the arch def it was given."""

    Config = RetrainerConfig

    def retrain(self, ctx, selection):
        CALLS["retrain"] += 1
        ctx.run_dir.write_json("model/model.json", {"arch_def": selection.arch_def},
                               kind="model")
        return dnax.RetrainResult("model/model.safetensors", "model/model.json", {"top1": 0.9})


class StandinPlugin:
    """Registers every stand-in (pass it to Registry.create(plugins=[...]))."""

    @dnax.hookimpl
    def dnax_register_data(self, register):
        register("standin-digits", StandinDigits)

    @dnax.hookimpl
    def dnax_register_teachers(self, register):
        register("standin", StandinTeacher)

    @dnax.hookimpl
    def dnax_register_spaces(self, register):
        register("standin", StandinSpace)

    @dnax.hookimpl
    def dnax_register_trainers(self, register):
        register("standin", StandinTrainer)

    @dnax.hookimpl
    def dnax_register_evaluators(self, register):
        register("standin", StandinEvaluator)

    @dnax.hookimpl
    def dnax_register_costs(self, register):
        register("standin-params", StandinParams)

    @dnax.hookimpl
    def dnax_register_selectors(self, register):
        register("standin", StandinSelector)

    @dnax.hookimpl
    def dnax_register_retrainers(self, register):
        register("standin", StandinRetrainer)


PIPELINE: dict[str, Any] = {
    "pipeline": {"name": "standin", "resolution": 8},
    "data": {"plugin": "standin-digits"},
    "teacher": {"plugin": "standin"},
    "space": {"plugin": "standin"},
    "trainer": {"plugin": "standin"},
    "evaluator": {"plugin": "standin"},
    "costs": [{"plugin": "standin-params"}],
    "selector": {"plugin": "standin", "budgets": {"params": 116}},
    "retrainer": {"plugin": "standin"},
}


class ArchSpace:
    """What :meth:`dnax.Selector.selection` uses of a search space: each chosen candidate's
    layers as its own arch strings, one stage per block."""

    def arch_def(self, blocks, chosen):
        return [list(c.arch) for c in chosen]

    def model_kwargs(self):
        return {"stem_size": 8}


class SelectorContext:
    """Just what a selector uses of a StageContext (no teacher blocks, an :class:`ArchSpace`)."""

    def __init__(self, run_dir="."):
        from types import SimpleNamespace

        self.run_dir = dnax.RunDir(run_dir)
        self.dist = dnax.DistInfo()
        self.results = {"teacher": SimpleNamespace(blocks=())}
        self.plugins = SimpleNamespace(space=ArchSpace())
        self.lines: list[str] = []

    def log(self, message):
        self.lines.append(message)

    def progress(self, *args, **kwargs):
        pass
