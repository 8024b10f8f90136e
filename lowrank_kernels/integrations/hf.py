"""Hugging Face ``transformers`` integration: low-rank strategies inside ``transformers.Trainer``.

:class:`LowRankTrainer` is a ``transformers.Trainer`` whose model structure is owned by
a :mod:`lowrank_kernels.train` strategy (Cuttlefish, ReLoRA, InRank, fixed):

* the optimizer gets the strategy's parameter groups (no L2 decay on the low-rank
  factors, which get the decoupled Frobenius decay after each step instead);
* the LR follows the strategy's shape (warm-up + cosine, a re-warm-up after the
  Cuttlefish switch, ReLoRA's jagged cosine) as a ``LambdaLR``;
* :class:`LowRankCallback` calls the strategy after every optimizer step; when it
  replaced layers, the optimizer is rebuilt through ``Trainer.create_optimizer`` (state
  kept for every surviving parameter) and wrapped by accelerate again, and the
  scheduler is rebuilt at the current step;
* the strategy sees the run through :class:`HFStrategyContext`, the
  :class:`~lowrank_kernels.train.context.StrategyContext` of a :class:`LowRankTrainer`.

Checkpoints: ``model.save_pretrained(path)`` of a factorized model stores the factors
(``<fqn>.V``/``<fqn>.U``); :func:`from_pretrained_lowrank` rebuilds the dense
architecture from the saved config and loads them through :func:`lowrank_kernels.restore`.

Limits (raise or documented): a structural switch while accelerate has wrapped the
model (multi-process DDP/FSDP launched through ``accelerate``/``torchrun`` with this
Trainer) is refused with an error, because the running loop holds the old wrapper; use
:class:`lowrank_kernels.train.Trainer` for multi-process low-rank training.
``resume_from_checkpoint`` after a switch is not supported.
"""

from __future__ import annotations

import glob
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..convert import restore
from ..train.context import FilterFn, carry_optimizer_state, unwrap_optimizer
from ..train.strategies import Strategy
from ._common import FrameworkContext, as_strategy

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "lowrank_kernels.integrations.hf needs transformers: pip install transformers"
    ) from exc

__all__ = [
    "HFStrategyContext",
    "LowRankCallback",
    "LowRankTrainer",
    "from_pretrained_lowrank",
    "load_lowrank_state",
]


class HFStrategyContext(FrameworkContext):
    """The :class:`~lowrank_kernels.train.context.StrategyContext` of a :class:`LowRankTrainer`.

    The model, the (unwrapped) optimizer and the global step are the trainer's; the
    run's length, the warm-up and the steps per epoch are set by
    :meth:`LowRankTrainer.create_scheduler` once ``transformers`` knows them.

    Args:
        trainer: the :class:`LowRankTrainer` running the strategy.
        filter_fn: ``(module, fqn) -> bool``, the layers the strategy may touch.
        example_input: a model input for the profiler, or a callable returning one.
        min_lr_ratio: final LR of the strategy's cosine, relative to ``learning_rate``.
    """

    def __init__(
        self,
        trainer: LowRankTrainer,
        filter_fn: FilterFn | None,
        example_input: Any,
        *,
        min_lr_ratio: float,
    ) -> None:
        super().__init__(filter_fn, example_input, warmup_steps=0, min_lr_ratio=min_lr_ratio)
        self._trainer = trainer

    @property
    def model(self) -> nn.Module:
        """``trainer.model`` (not accelerate's wrapper)."""
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The ``torch.optim.Optimizer`` inside accelerate's wrapper (None before it exists)."""
        opt = self._trainer.optimizer
        return None if opt is None else unwrap_optimizer(opt)

    @property
    def step(self) -> int:
        """``trainer.state.global_step``: completed optimizer steps."""
        return self._trainer.state.global_step

    def rebuild_optimizer(self) -> None:
        """:meth:`LowRankTrainer.rebuild_optimizer_and_scheduler` at the current step."""
        self._trainer.rebuild_optimizer_and_scheduler(self.step)


class LowRankCallback(TrainerCallback):
    """Runs a strategy's hooks inside a :class:`LowRankTrainer` (added by it automatically).

    Args:
        trainer: the :class:`LowRankTrainer` whose optimizer and scheduler it rebuilds.
    """

    def __init__(self, trainer: LowRankTrainer) -> None:
        self.trainer = trainer
        self.structure_changes: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        t = self.trainer
        if not t._lowrank_setup_done:
            t._lowrank_setup_done = True
            t.lowrank_strategy.setup(t.lowrank_context)
            # setup may replace layers (fixed, ReLoRA, InRank); rebuilding is harmless otherwise
            t.lowrank_context.rebuild_optimizer()

    def on_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        lr = unwrap_optimizer(t.optimizer).param_groups[0]["lr"]
        t.lowrank_strategy.decay_factors(t.model, lr * args.weight_decay)

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if t.lowrank_strategy.after_step(t.lowrank_context, state.global_step):
            t.lowrank_context.rebuild_optimizer()
            self.structure_changes.append(state.global_step)


class LowRankTrainer(Trainer):
    """``transformers.Trainer`` with a low-rank strategy owning the structure and the LR.

    Args:
        *args, **kwargs: ``transformers.Trainer``'s arguments (model, args, datasets, ...).
        strategy: a :class:`~lowrank_kernels.train.strategies.Strategy` or its name
            (``"cuttlefish"``, ``"relora"``, ``"inrank"``, ``"fixed"``, ``"full"``).
        strategy_kwargs: the strategy's arguments when ``strategy`` is a name.
        filter_fn: ``(module, fqn) -> bool``, the layers the strategy may touch (GPT-2's
            tied ``lm_head`` is never a candidate anyway).
        example_input: model input for Cuttlefish's profiler (tensor, tuple or kwargs
            dict, or a callable returning one); None: the first training batch.
        min_lr_ratio: final LR of the strategy's cosine, relative to ``learning_rate``.

    The warm-up length is ``TrainingArguments.get_warmup_steps`` (``warmup_steps`` /
    ``warmup_ratio``); ``lr_scheduler_type`` is ignored (the strategy owns the LR shape).

    Attributes:
        lowrank_strategy: the strategy.
        lowrank_context: its :class:`HFStrategyContext`.
        lowrank_callback: the :class:`LowRankCallback` driving it.
    """

    def __init__(
        self,
        *args: Any,
        strategy: Strategy | str = "cuttlefish",
        strategy_kwargs: dict[str, Any] | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        example_input: Any = None,
        min_lr_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lowrank_strategy = as_strategy(strategy, strategy_kwargs)
        self._lowrank_setup_done = False
        self.lowrank_context = HFStrategyContext(
            self,
            filter_fn,
            example_input if example_input is not None else self._first_batch,
            min_lr_ratio=min_lr_ratio,
        )
        self.lowrank_callback = LowRankCallback(self)
        self.add_callback(self.lowrank_callback)

    @property
    def lowrank_view(self) -> HFStrategyContext:
        """The same object as :attr:`lowrank_context` (its earlier name)."""
        return self.lowrank_context

    def _first_batch(self) -> dict[str, torch.Tensor]:
        batch = next(iter(self.get_train_dataloader()))
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}

    # -- optimizer and scheduler ---------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimizer class/kwargs from ``TrainingArguments`` over the strategy's groups."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = self.lowrank_strategy.param_groups(opt_model, self.args.weight_decay)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """``LambdaLR`` of the strategy's ``lr_factor`` (warm-up, cosine, re-warm-ups)."""
        if self.lr_scheduler is None:
            ctx = self.lowrank_context
            ctx.total_steps = max(1, int(num_training_steps))
            ctx.warmup_steps = self.args.get_warmup_steps(num_training_steps)
            epochs = max(1, math.ceil(self.args.num_train_epochs))
            ctx.steps_per_epoch = max(1, ctx.total_steps // epochs)
            strategy = self.lowrank_strategy
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer if optimizer is not None else self.optimizer,
                lambda step: strategy.lr_factor(step, ctx),
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def rebuild_optimizer_and_scheduler(self, step: int) -> None:
        """New optimizer for the current parameters (surviving ones keep their state) and a
        scheduler positioned at ``step``; called after every structural change."""
        if self.model_wrapped is not self.model:
            raise RuntimeError(
                "LowRankTrainer: the model is wrapped (DDP/FSDP through accelerate), and the "
                "running transformers loop would keep training the old wrapper after a "
                "structural switch; run multi-process low-rank training with "
                "lowrank_kernels.train.Trainer under torchrun instead"
            )
        old = self.optimizer
        self.optimizer = None  # create_optimizer only builds when there is none
        new = self.create_optimizer()
        carry_optimizer_state(old, new)
        self.optimizer = self.accelerator.prepare_optimizer(new)
        self.lr_scheduler = None
        sched = self.create_scheduler(self.lowrank_context.total_steps, self.optimizer)
        with warnings.catch_warnings():
            # "lr_scheduler.step() before optimizer.step()": intended, we fast-forward
            warnings.simplefilter("ignore", UserWarning)
            sched.last_epoch = step - 1
            sched.step()


# ---------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained


def load_lowrank_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a ``save_pretrained`` directory (safetensors shards or ``.bin``)."""
    path = os.fspath(path)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    state: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            state.update(load_file(f))
        return state
    files = sorted(glob.glob(os.path.join(path, "*.bin")))
    if not files:
        raise FileNotFoundError(
            f"path: no *.safetensors or *.bin weights in {path!r} (expected a save_pretrained dir)"
        )
    for f in files:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def from_pretrained_lowrank(
    model_cls: type, path: str | os.PathLike, *, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a factorized model written by ``save_pretrained``: dense build, then ``restore``.

    Args:
        model_cls: the ``transformers`` model class (e.g. ``GPT2LMHeadModel``).
        path: the ``save_pretrained`` directory (local; nothing is downloaded).
        dtype: cast the model to this dtype after loading (None: as saved).

    Returns:
        The model in eval mode, with ``LowRankLinear`` layers at the saved ranks.

    Tied weights that ``save_pretrained`` wrote once (GPT-2's ``lm_head`` shares the
    token embedding) are filled in from their twin before the strict load.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path: {path!r} is not a save_pretrained directory")
    config = model_cls.config_class.from_pretrained(path)
    model = model_cls(config)
    state = load_lowrank_state(path)
    # names that share one Parameter: if one was saved, the others get the same tensor
    by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    for names in by_param.values():
        present = [n for n in names if n in state]
        if present:
            for n in names:
                state.setdefault(n, state[present[0]])
    restore(model, state)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
