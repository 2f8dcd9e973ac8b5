"""A block trainer: each step trains one random path of one block's supernet to reproduce the
teacher's block output, then every supernet is saved for any evaluator to load."""

import itertools

import torch
import torch.nn.functional as F
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.supernet import save_supernet


@frozen
class OnePathConfig:
    steps: int = field(default=10, validator=dnax.positive, metadata={"help": "steps per block"})
    lr: float = field(default=0.01, validator=dnax.positive, metadata={"help": "Adam lr"})


class OnePath(dnax.BlockTrainer):
    """Single-path distillation of every block, one block after the other."""

    Config = OnePathConfig

    def train(self, ctx):
        space, teacher, result = ctx.plugins.space, ctx.plugins.teacher, ctx.results["teacher"]
        model, rng = teacher.load(ctx, result), torch.Generator().manual_seed(ctx.seed)
        steps, done = self.config.steps, []
        for block in result.blocks:
            torch.manual_seed(ctx.seed + block.index)
            net, cells = space.build_supernet(block).to(ctx.device).train(), space.cells(block)
            opt = torch.optim.Adam(net.parameters(), lr=self.config.lr)
            batches = itertools.cycle(ctx.loader("train", 16, shuffle=True, drop_last=True))
            for step in range(steps):
                feats = teacher.block_features(model, next(batches)[0].to(ctx.device))
                cell = cells[int(torch.randint(len(cells), (), generator=rng))]
                ops = torch.randint(len(cell.ops), (cell.depth,), generator=rng).tolist()
                out = net(feats[block.index], cell.index, ops)
                loss = F.mse_loss(out, feats[block.index + 1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.progress(f"block {block.index}", step + 1, steps, loss=loss.item())
            rel = f"supernets/block{block.index}.safetensors"
            save_supernet(ctx.run_dir, rel, net, block, space.fingerprint(), steps=str(steps))
            ctx.hook.dnax_block_trained(block=block, epoch=1, losses={"loss": loss.item()},
                                        final=True)
            done.append(dnax.BlockCheckpoint(block.index, rel, 1, steps, loss.item()))
        return dnax.TrainResult(tuple(done))


@dnax.hookimpl
def dnax_register_trainers(register):
    register("one-path", OnePath)
