"""Lightning integration: a ``Callback`` that runs a low-rank strategy inside ``Trainer.fit``.

:class:`LowRankCallback` calls a :mod:`lowrank_kernels.train` strategy (Cuttlefish,
ReLoRA, InRank, fixed) after every optimizer step. When the strategy replaced layers
(the Cuttlefish switch, InRank growth), the optimizers are re-created **through the
Lightning strategy** (``trainer.strategy.setup_optimizers``, which calls the module's
``configure_optimizers`` again on the new parameters), Adam state is carried over for
every surviving parameter, and each LR scheduler is moved to the current step.

The LR shape stays the one ``configure_optimizers`` returns; to get the strategy's own
shape (warm-up, cosine, the re-warm-up after the switch) use
``LambdaLR(opt, callback.lr_factor)``.

The strategy sees the run through :class:`LightningStrategyContext`, the
:class:`~lowrank_kernels.train.context.StrategyContext` of a ``Trainer.fit``.

Single-process only for structural switches: under a multi-process Lightning strategy
(DDP/FSDP) the running loop holds the old wrapper, so a switch raises; use
:class:`lowrank_kernels.train.Trainer` under ``torchrun`` for that.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..train.context import FilterFn, carry_optimizer_state, unwrap_optimizer
from ..train.strategies import Strategy
from ._common import FrameworkContext, as_strategy

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "lowrank_kernels.integrations.lightning needs Lightning: "
        "pip install 'lowrank-kernels[lightning]'"
    ) from exc

__all__ = ["LightningStrategyContext", "LowRankCallback"]


class LightningStrategyContext(FrameworkContext):
    """The :class:`~lowrank_kernels.train.context.StrategyContext` of a Lightning ``fit``.

    The model is the ``LightningModule``, the optimizer the first of
    ``trainer.optimizers`` (unwrapped), the step ``trainer.global_step``; the run's
    length and the steps per epoch are set by :class:`LowRankCallback` once Lightning
    knows them.

    Args:
        trainer: the running ``lightning.pytorch.Trainer``.
        pl_module: the ``LightningModule`` being fitted.
        filter_fn: ``(module, fqn) -> bool`` over the module's layers.
        example_input: a model input for the profiler, or a callable returning one.
        warmup_steps, min_lr_ratio: the LR shape the strategy's ``lr_factor`` follows.
    """

    def __init__(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        filter_fn: FilterFn | None,
        example_input: Any = None,
        *,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(
            filter_fn, example_input, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio
        )
        self._trainer = trainer
        self._module = pl_module

    @property
    def model(self) -> nn.Module:
        """The ``LightningModule`` (never the strategy's DDP/FSDP wrapper)."""
        return self._module

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The ``torch.optim.Optimizer`` of ``trainer.optimizers[0]`` (None before fit)."""
        optimizers = self._trainer.optimizers
        return unwrap_optimizer(optimizers[0]) if optimizers else None

    @property
    def step(self) -> int:
        """``trainer.global_step``: completed optimizer steps."""
        return self._trainer.global_step

    def rebuild_optimizer(self) -> None:
        """Re-create every optimizer through the Lightning strategy and continue.

        ``trainer.strategy.setup_optimizers`` calls the module's ``configure_optimizers``
        again on the new parameters; optimizer ``i`` keeps the state the old optimizer
        ``i`` held for surviving parameters, and each step-interval LR scheduler is
        moved to the current step (instead of restarting at 0).
        """
        trainer = self._trainer
        if trainer.world_size > 1:
            raise RuntimeError(
                "LowRankCallback: a structural switch under a multi-process Lightning strategy "
                "would leave the running loop with the old DDP/FSDP wrapper; use "
                "lowrank_kernels.train.Trainer under torchrun for multi-process low-rank training"
            )
        old = list(trainer.optimizers)
        step = trainer.global_step
        trainer.strategy.setup_optimizers(trainer)  # configure_optimizers() on the new params
        for i, new in enumerate(trainer.optimizers):
            if i < len(old):
                carry_optimizer_state(old[i], unwrap_optimizer(new))
        with warnings.catch_warnings():
            # "lr_scheduler.step() before optimizer.step()": intended, we fast-forward
            warnings.simplefilter("ignore", UserWarning)
            for config in trainer.lr_scheduler_configs:
                sched = config.scheduler
                if config.interval == "step" and hasattr(sched, "last_epoch"):
                    sched.last_epoch = step - 1
                    sched.step()


class LowRankCallback(pl.Callback):
    """Runs ``strategy`` on a ``LightningModule`` during ``fit``.

    Args:
        strategy: a :class:`~lowrank_kernels.train.strategies.Strategy` or its name.
        strategy_kwargs: the strategy's arguments when ``strategy`` is a name.
        filter_fn: ``(module, fqn) -> bool`` over the ``LightningModule``'s layers.
        example_input: model input for Cuttlefish's profiler (``profile=True``), or a
            callable returning one.
        warmup_steps, min_lr_ratio: the shape :meth:`lr_factor` returns.
        weight_decay: λ of the decoupled Frobenius decay of the low-rank factors (give
            your optimizer's weight decay; factors should get none from the optimizer).

    Attributes:
        structure_changes: global steps after which the structure changed.
        context: the strategy's :class:`LightningStrategyContext` (None before ``fit``).
    """

    def __init__(
        self,
        strategy: Strategy | str = "cuttlefish",
        strategy_kwargs: dict[str, Any] | None = None,
        *,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        example_input: Any = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.strategy = as_strategy(strategy, strategy_kwargs)
        self._filter_fn = filter_fn
        self._example_input = example_input
        self._lr = {"warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio}
        self.weight_decay = weight_decay
        self.context: LightningStrategyContext | None = None
        self.structure_changes: list[int] = []
        self._setup_done = False

    @property
    def view(self) -> LightningStrategyContext | None:
        """The same object as :attr:`context` (its earlier name)."""
        return self.context

    def lr_factor(self, step: int) -> float:
        """The strategy's LR multiplier for optimizer step ``step`` (for a ``LambdaLR``)."""
        if self.context is None:  # before fit: the shape without a switch
            return 1.0
        return self.strategy.lr_factor(step, self.context)

    # -- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.context = LightningStrategyContext(
            trainer, pl_module, self._filter_fn, self._example_input, **self._lr
        )
        self.context.total_steps = max(1, int(trainer.max_steps)) if trainer.max_steps > 0 else 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self.context
        total = trainer.estimated_stepping_batches
        if total and total != float("inf"):
            ctx.total_steps = max(1, int(total))
            ctx.steps_per_epoch = max(1, int(trainer.num_training_batches))
        if not self._setup_done:
            self._setup_done = True
            before = {id(p) for p in pl_module.parameters()}
            self.strategy.setup(ctx)
            if {id(p) for p in pl_module.parameters()} != before:
                ctx.rebuild_optimizer()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.optimizers:
            lr = unwrap_optimizer(trainer.optimizers[0]).param_groups[0]["lr"]
            self.strategy.decay_factors(pl_module, lr * self.weight_decay)
        step = trainer.global_step
        if self.strategy.after_step(self.context, step):
            self.context.rebuild_optimizer()
            self.structure_changes.append(step)
