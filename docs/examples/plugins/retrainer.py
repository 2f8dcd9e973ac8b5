"""A retrainer: the selected network trained from scratch with the toolkit's EpochLoop, which
checks the loss, reports progress and stores a resume state every epoch; ``dnax.load_model``
reads what it exports."""

import json

import torch
import torch.nn.functional as F
from attrs import asdict, field, frozen
from timm.scheduler import CosineLRScheduler

import dnax
from dnax.plugins.toolkit.builder import build_network
from dnax.plugins.toolkit.training import EpochLoop, evaluate


@frozen
class QuickConfig:
    epochs: int = field(default=1, validator=dnax.positive, metadata={"help": "epochs"})
    lr: float = field(default=0.005, validator=dnax.positive, metadata={"help": "AdamW lr"})


class Quick(dnax.Retrainer):
    """AdamW with a cosine schedule; reports val top-1 of the exported weights."""

    Config = QuickConfig

    def retrain(self, ctx, selection):
        torch.manual_seed(ctx.seed)
        model = build_network(selection.arch_def, ctx.plugins.data.num_classes,
                              selection.model_kwargs).to(ctx.device)
        opt = torch.optim.AdamW(model.parameters(), lr=self.config.lr)
        train, val = ctx.loader("train", 16, shuffle=True, drop_last=True), ctx.loader("val", 64)
        steps = self.config.epochs * len(train)  # the cosine decays per step, to 0 at the end
        loop = EpochLoop(
            ctx, name="retrain", label="retraining", model=model, optimizer=opt, loader=train,
            scheduler=CosineLRScheduler(opt, t_initial=steps, t_in_epochs=False),
            epochs=self.config.epochs, step_loss=lambda net, x, y: F.cross_entropy(net(x), y),
            resume="model/resume.pt", evaluate=lambda epoch: evaluate(model, val, ctx.device),
            fingerprint=json.dumps([selection.arch_def, asdict(self.config)]))
        last = loop.fit()["history"][-1]
        ctx.run_dir.save_tensors("model/weights.safetensors", model.state_dict(), kind="model")
        ctx.run_dir.write_json("model/network.json", {
            "arch_def": selection.arch_def, "model_kwargs": selection.model_kwargs,
            "num_classes": ctx.plugins.data.num_classes}, kind="network")
        return dnax.RetrainResult("model/weights.safetensors", "model/network.json",
                                  {"top1": last["top1"], "val_loss": last["val_loss"]})


@dnax.hookimpl
def dnax_register_retrainers(register):
    register("quick", Quick)


@dnax.hookimpl
def dnax_load_model(path):
    if not (path / "network.json").is_file():
        return None  # not this retrainer's export: another plugin may know it
    meta = dnax.RunDir(path).read_json("network.json", kind="network")
    model = build_network(meta["arch_def"], meta["num_classes"], meta["model_kwargs"])
    model.load_state_dict(dnax.load_safetensors(path / "weights.safetensors", kind="model")[0])
    return model.eval()
