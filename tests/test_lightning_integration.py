"""Lightning ``Callback``: a Cuttlefish switch inside ``lightning.pytorch.Trainer.fit``."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_kernels.nn import LowRankLinear
from lowrank_kernels.train.data import make_task

pl = pytest.importorskip("lightning.pytorch")
from lowrank_kernels.integrations.lightning import LowRankCallback  # noqa: E402

STEPS, SWITCH, BASE_LR = 10, 6, 1e-2


def lr_shape(step: int) -> float:
    return 1.0 / (1.0 + 0.1 * step)


class CharLM(pl.LightningModule):
    """The package's tiny char GPT on its offline text, as a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.task = make_task(
            "gpt", seed=0, batch_size=4, block_size=16, eval_batches=1,
            model_kwargs={"n_layer": 1, "n_head": 2, "d_model": 32},
        )  # fmt: skip
        torch.manual_seed(0)
        self.net = self.task.make_model()
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.configure_calls = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.task.loss(self(x[0]), y[0])
        self.losses.append(float(loss.detach()))
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def configure_optimizers(self):
        self.configure_calls += 1
        opt = torch.optim.AdamW(self.parameters(), lr=BASE_LR, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_shape)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        batches = [self.task.train_batch(i, torch.device("cpu")) for i in range(STEPS)]
        return torch.utils.data.DataLoader(batches, batch_size=1)


def test_callback_switches_recreates_optimizers_and_keeps_training():
    module = CharLM()
    callback = LowRankCallback(
        "cuttlefish",
        # converges at the 3rd measurement (step 6), as in the trainer's own tests
        {"track_every": 2, "span": 2, "window": 2, "tol": 1e9, "max_switch_step": 8,
         "rank_multiple": 4, "profile": False},
    )  # fmt: skip
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    factor_at_switch = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            layer = pl_module.net.blocks[0].fc
            if trainer.global_step == SWITCH and isinstance(layer, LowRankLinear):
                factor_at_switch["V"] = layer.V.detach().clone()

    trainer.callbacks.append(Snapshot())
    trainer.fit(module)

    strategy = callback.strategy
    assert strategy.switch_step == SWITCH and callback.structure_changes == [SWITCH]
    ranks = strategy.ranks(module)
    assert ranks and ranks == strategy.switch_ranks
    named = dict(module.named_modules())
    assert all(isinstance(named[f], LowRankLinear) and named[f].rank == r for f, r in ranks.items())
    # optimizers were re-created through Lightning (configure_optimizers called again) and
    # hold exactly the current parameters
    assert module.configure_calls == 2
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.parameters()}
    # surviving parameters kept their Adam state; the factors' started at the switch
    assert int(opt.state[module.net.tok_emb.weight]["step"]) == STEPS
    fc = module.net.blocks[0].fc
    assert isinstance(fc, LowRankLinear) and int(opt.state[fc.V]["step"]) == STEPS - SWITCH
    assert not torch.equal(factor_at_switch["V"], fc.V.detach())  # trained after the switch
    # the scheduler continued at the current step instead of restarting at 0
    assert len(module.lrs) == STEPS
    for step, lr in enumerate(module.lrs):
        assert math.isclose(lr, BASE_LR * lr_shape(step), rel_tol=1e-9), (step, lr)
    assert all(math.isfinite(v) for v in module.losses) and module.losses[-1] < module.losses[0]


def test_bad_strategy_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        LowRankCallback("nope")
    with pytest.raises(ValueError, match="strategy_kwargs"):
        from lowrank_kernels.train.strategies import Cuttlefish

        LowRankCallback(Cuttlefish(), {"tol": 1.0})
