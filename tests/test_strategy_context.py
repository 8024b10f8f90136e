"""The strategy ↔ host contract: ``StrategyContext``.

* the protocol declares exactly the members strategies use, each with its kind;
* the package's ``Trainer``, the Hugging Face context and the Lightning context satisfy
  it (``isinstance`` on the runtime-checkable protocol, plus a per-member kind check);
* every strategy runs against a hand-written context whose public surface is only the
  protocol, so strategies need nothing else;
* ``carry_optimizer_state`` (the one rebuild helper of all hosts) keeps the Adam state
  of surviving parameters: moments checked against values computed here, and the next
  step against the AdamW formula.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
from torch import nn

from lowrank_kernels.nn import LoRALinear, LowRankLinear
from lowrank_kernels.train import TrainConfig, Trainer
from lowrank_kernels.train import context as context_mod
from lowrank_kernels.train.context import StrategyContext, carry_optimizer_state
from lowrank_kernels.train.strategies import Cuttlefish, Fixed, InRank, ReLoRA, Strategy

# Every member of the protocol and its kind: "data" (read-only; a property or a plain
# attribute in an implementation) or "method".
MEMBERS = {
    "model": "data",
    "optimizer": "data",
    "step": "data",
    "total_steps": "data",
    "steps_per_epoch": "data",
    "warmup_steps": "data",
    "min_lr_ratio": "data",
    "filter_fn": "data",
    "example_input": "method",
    "is_main_process": "method",
    "broadcast_object": "method",
    "broadcast_tensor_": "method",
    "rebuild_optimizer": "method",
    "log_info": "method",
}


def public_names(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_")}


def test_protocol_declares_each_member_with_its_kind_and_a_docstring():
    assert public_names(StrategyContext) == set(MEMBERS)
    for name, kind in MEMBERS.items():
        member = vars(StrategyContext)[name]
        if kind == "data":
            assert isinstance(member, property), name
            doc = member.fget.__doc__
        else:
            assert inspect.isfunction(member), name
            doc = member.__doc__
        assert doc and doc.strip(), f"{name} has no docstring"


def assert_implements(ctx: Any) -> None:
    """``ctx`` passes the runtime protocol check and has every member with the right kind."""
    assert isinstance(ctx, StrategyContext)
    for name, kind in MEMBERS.items():
        static = inspect.getattr_static(ctx, name)  # does not run properties
        in_instance = name in vars(ctx)
        if kind == "data":
            # a property, or a value stored on the instance (not a method of the class)
            assert isinstance(static, property) or in_instance, (type(ctx).__name__, name)
        else:
            assert not in_instance and inspect.isfunction(static), (type(ctx).__name__, name)
            assert callable(getattr(ctx, name))
    assert isinstance(ctx.model, nn.Module)
    assert ctx.optimizer is None or isinstance(ctx.optimizer, torch.optim.Optimizer)
    for name in ("step", "total_steps", "steps_per_epoch", "warmup_steps"):
        assert isinstance(getattr(ctx, name), int) and getattr(ctx, name) >= 0, name
    assert ctx.total_steps >= 1 and ctx.steps_per_epoch >= 1
    assert isinstance(ctx.min_lr_ratio, float)
    assert ctx.filter_fn is None or callable(ctx.filter_fn)
    assert ctx.is_main_process() is True  # one process
    decision = {"fc": 8}
    assert ctx.broadcast_object(decision) is decision
    t = torch.arange(3.0)
    ctx.broadcast_tensor_(t)
    assert torch.equal(t, torch.arange(3.0))
    ctx.log_info("context check")


# ---------------------------------------------------------------------------------------------
# The three implementations


def test_the_trainer_is_a_strategy_context(monkeypatch):
    cfg = TrainConfig(
        model="gpt", method="fixed", steps=3, batch_size=2, warmup_steps=1, device="cpu",
        eval_every=1000, strategy_kwargs={"rank": 0.5},
        task_kwargs={"block_size": 8, "eval_batches": 1,
                     "model_kwargs": {"n_layer": 1, "n_head": 2, "d_model": 32}},
    )  # fmt: skip
    messages: list[str] = []
    trainer = Trainer(cfg, progress=False, log=messages.append)
    assert_implements(trainer)  # before the first step: no optimizer yet
    assert messages == ["context check"]
    assert trainer.filter_fn is trainer.task.filter_fn
    assert trainer.steps_per_epoch == trainer.task.steps_per_epoch
    assert (trainer.warmup_steps, trainer.min_lr_ratio) == (1, cfg.min_lr_ratio)
    assert torch.equal(trainer.example_input(), trainer.task.example_input(trainer.device))

    calls = []
    real = context_mod.carry_optimizer_state
    monkeypatch.setattr(
        "lowrank_kernels.train.trainer.carry_optimizer_state",
        lambda old, new: calls.append(old) or real(old, new),
    )
    trainer.fit(until=1)
    assert len(calls) == 1 and calls[0] is None  # the first build goes through the helper
    assert_implements(trainer)
    assert trainer.step == 1


def _tiny_gpt2(transformers):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=32, n_positions=8, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(8) + i) % 32
        return {"input_ids": ids, "labels": ids}


def test_the_hf_context_satisfies_the_protocol(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lowrank_kernels.integrations import hf

    assert hf.carry_optimizer_state is carry_optimizer_state  # the one shared helper
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
        learning_rate=1e-3, warmup_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = hf.LowRankTrainer(
        model=_tiny_gpt2(transformers), args=args, train_dataset=_Tokens(), strategy="fixed",
        strategy_kwargs={"rank": 0.25},
    )  # fmt: skip
    ctx = trainer.lowrank_context
    assert isinstance(ctx, hf.HFStrategyContext) and trainer.lowrank_view is ctx
    assert_implements(ctx)
    assert ctx.optimizer is None and ctx.step == 0
    kept = []
    monkeypatch.setattr(
        hf, "carry_optimizer_state", lambda o, n: kept.append(o) or carry_optimizer_state(o, n)
    )
    trainer.train()
    assert len(kept) == 1  # the rebuild after setup
    assert_implements(ctx)
    assert ctx.model is trainer.model and ctx.step == 2
    assert ctx.optimizer is trainer.optimizer.optimizer  # unwrapped from accelerate
    assert (ctx.total_steps, ctx.warmup_steps) == (2, 1)
    example = ctx.example_input()  # the first training batch, on the model's device
    assert set(example) == {"input_ids", "labels"}


def _tiny_lightning_module(pl):
    """A two-layer regression ``LightningModule`` (defined here: lightning is optional)."""

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self(x) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(
                torch.randn(12, 16, generator=g), torch.randn(12, 4, generator=g)
            )
            return torch.utils.data.DataLoader(data, batch_size=4)

    return Tiny()


def test_the_lightning_context_satisfies_the_protocol(monkeypatch):
    pl = pytest.importorskip("lightning.pytorch")
    from lowrank_kernels.integrations import lightning as lrk_lightning

    assert lrk_lightning.carry_optimizer_state is carry_optimizer_state
    kept = []
    real = carry_optimizer_state
    monkeypatch.setattr(
        lrk_lightning, "carry_optimizer_state", lambda o, n: kept.append(o) or real(o, n)
    )
    callback = lrk_lightning.LowRankCallback(
        "fixed", {"rank": 4, "rank_multiple": 1}, example_input=torch.zeros(2, 16)
    )
    assert callback.context is None
    module = _tiny_lightning_module(pl)
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module)
    ctx = callback.context
    assert isinstance(ctx, lrk_lightning.LightningStrategyContext) and callback.view is ctx
    assert_implements(ctx)
    assert len(kept) == 1  # setup factorized: one rebuild through the shared helper
    assert ctx.model is module and ctx.step == 3 and ctx.total_steps == 3
    assert ctx.optimizer is not None and ctx.steps_per_epoch == 3
    assert isinstance(module.net[0], LowRankLinear)
    assert ctx.example_input().shape == (2, 16)


# ---------------------------------------------------------------------------------------------
# Strategies against a context that has only the protocol


class MinimalContext:
    """A hand-written host: its public surface is exactly ``StrategyContext``.

    The optimizer is plain AdamW over the trainable parameters; every public attribute
    read is recorded, so a test can also see what a strategy used.
    """

    def __init__(self, model: nn.Module, total_steps: int, example: torch.Tensor) -> None:
        self._model = model
        self._optimizer: torch.optim.Optimizer | None = None
        self._step = 0
        self._total_steps = total_steps
        self._example = example
        self._messages: list[str] = []
        self._seen: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            object.__getattribute__(self, "_seen").add(name)
        return object.__getattribute__(self, name)

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self._optimizer

    @property
    def step(self) -> int:
        return self._step

    @property
    def total_steps(self) -> int:
        return self._total_steps

    @property
    def steps_per_epoch(self) -> int:
        return 4

    @property
    def warmup_steps(self) -> int:
        return 2

    @property
    def min_lr_ratio(self) -> float:
        return 0.1

    @property
    def filter_fn(self):
        return None  # every nn.Linear is a candidate

    def example_input(self) -> torch.Tensor:
        return self._example

    def is_main_process(self) -> bool:
        return True

    def broadcast_object(self, obj):
        return obj

    def broadcast_tensor_(self, tensor: torch.Tensor) -> None:
        pass

    def rebuild_optimizer(self) -> None:
        params = [p for p in self._model.parameters() if p.requires_grad]
        old, self._optimizer = self._optimizer, torch.optim.AdamW(params, lr=1e-2)
        carry_optimizer_state(old, self._optimizer)

    def log_info(self, message: str) -> None:
        self._messages.append(message)


def test_the_minimal_context_has_only_the_protocol():
    assert public_names(MinimalContext) == set(MEMBERS)
    ctx = MinimalContext(nn.Linear(2, 2), 1, torch.zeros(1, 2))
    assert_implements(ctx)


def _drive(strategy: Strategy, ctx: MinimalContext, data: tuple[torch.Tensor, torch.Tensor]):
    """The loop every host runs, in its smallest form; returns the losses."""
    strategy.setup(ctx)
    ctx.rebuild_optimizer()
    losses = []
    x, y = data
    while ctx.step < ctx.total_steps:
        factor = strategy.lr_factor(ctx.step, ctx)
        for group in ctx.optimizer.param_groups:
            group["lr"] = 1e-2 * factor
        loss = (ctx.model(x) - y).pow(2).mean()
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        strategy.decay_factors(ctx.model, 1e-2 * factor * 0.01)
        ctx._step += 1
        if strategy.after_step(ctx, ctx.step):
            ctx.rebuild_optimizer()
        losses.append(float(loss.detach()))
    return losses


STRATEGY_CASES = {
    "fixed": lambda: Fixed(rank=8, rank_multiple=1),
    # profiler on (a threshold every layer passes): exercises example_input
    "cuttlefish": lambda: Cuttlefish(
        track_every=1,
        span=2,
        window=2,
        tol=1e9,
        max_switch_step=6,
        rank_multiple=4,
        profile=True,
        min_speedup=1e-6,
        profile_repeats=1,
    ),
    "relora": lambda: ReLoRA(rank=4, cycle=3, restart_warmup=1),
    "inrank": lambda: InRank(init_rank=1, buffer=2, gap=2, warmup=2, growth_steps=6),
}


@pytest.mark.parametrize("name", list(STRATEGY_CASES))
def test_strategies_need_nothing_but_the_protocol(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    with torch.no_grad():  # a small init: training, not the init, shapes the spectra,
        for layer in (model[0], model[2]):  # so Cuttlefish finds ranks worth factorizing
            layer.weight.mul_(0.01)
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(8, 16, generator=g), torch.randn(8, 64, generator=g))
    ctx = MinimalContext(model, total_steps=10, example=data[0])
    strategy = STRATEGY_CASES[name]()
    losses = _drive(strategy, ctx, data)

    assert ctx._seen <= set(MEMBERS)  # nothing else was even looked up
    assert {"model", "total_steps"} <= ctx._seen
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert strategy.switch_step is not None
    in_opt = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    kinds = {type(m) for m in model.modules()}
    if name == "relora":
        assert LoRALinear in kinds and strategy.restarts == [3, 6, 9]
        assert "optimizer" in ctx._seen and "broadcast_tensor_" in ctx._seen
    else:
        assert LowRankLinear in kinds and strategy.ranks(model)
    if name == "cuttlefish":
        # converged at the 3rd measurement (tol=1e9: as soon as the detector has its history)
        assert strategy.switch_step == 3 and strategy.switch_reason == "stable ranks converged"
        assert strategy.switch_ranks == strategy.ranks(model)
        assert {"example_input", "is_main_process", "broadcast_object"} <= ctx._seen


# ---------------------------------------------------------------------------------------------
# The single rebuild helper


def test_carry_optimizer_state_keeps_surviving_state_and_adam_continues_from_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    lr, (b1, b2), eps = 1e-2, (0.9, 0.999), 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    survivor = model[0].weight
    grads = []
    for _ in range(3):
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        grads.append(survivor.grad.detach().double().clone())
        opt.step()
    # Adam's moments from the recorded gradients (float64)
    m = sum((1 - b1) * b1 ** (2 - t) * g for t, g in enumerate(grads))
    v = sum((1 - b2) * b2 ** (2 - t) * g * g for t, g in enumerate(grads))

    model[2] = nn.Linear(6, 3)  # a structural change: new parameters replace old ones

    class Wrapped:  # the way accelerate / Lightning hold the optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

    new = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    assert carry_optimizer_state(Wrapped(opt), new) == 2  # weight and bias of model[0]
    assert carry_optimizer_state(None, torch.optim.Adam(model.parameters())) == 0
    state = new.state[survivor]
    assert int(state["step"]) == 3
    torch.testing.assert_close(state["exp_avg"].double(), m, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(state["exp_avg_sq"].double(), v, rtol=1e-5, atol=1e-12)
    assert model[2].weight not in new.state  # the new layer starts fresh

    # the next step is Adam's 4th step from the carried moments
    before = survivor.detach().double().clone()
    new.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    g = survivor.grad.detach().double()
    m4, v4 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    expected = before - lr * (m4 / (1 - b1**4)) / ((v4 / (1 - b2**4)).sqrt() + eps)
    new.step()
    torch.testing.assert_close(survivor.detach().double(), expected, rtol=1e-5, atol=1e-7)


def test_inherit_optimizer_state_derives_the_state_of_a_replacing_parameter():
    from lowrank_kernels.train.context import carry_optimizer_state, inherit_optimizer_state

    old_p, kept = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(2))
    old = torch.optim.AdamW([old_p, kept])
    (old_p.sum() + kept.sum()).backward()
    old.step()
    new_p = nn.Parameter(old_p.detach()[:, :2].clone())
    inherit_optimizer_state(
        new_p, old_p, lambda st: {k: v[:, :2].clone() if v.dim() else v for k, v in st.items()}
    )
    new = torch.optim.AdamW([new_p, kept])
    assert carry_optimizer_state(old, new) == 2
    assert torch.equal(new.state[new_p]["exp_avg"], old.state[old_p]["exp_avg"][:, :2])
    assert new.state[kept] is old.state[kept]
    fresh = torch.optim.AdamW([new_p])
    assert carry_optimizer_state(old, fresh) == 0  # the link is used once
