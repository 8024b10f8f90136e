"""What the strategies in :mod:`lowrank_kernels.train.strategies` read from "a trainer".

The strategies were written against :class:`lowrank_kernels.train.Trainer`; the
framework integrations hand them this small view instead, so Cuttlefish, ReLoRA and
InRank make exactly the same decisions (rank 0 decides under ``torch.distributed``)
inside a Hugging Face or Lightning loop.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..train.strategies import Strategy, make_strategy


def as_strategy(strategy: Strategy | str, strategy_kwargs: dict[str, Any] | None) -> Strategy:
    """A strategy instance from an instance or a name (``"cuttlefish"``, ``"relora"``, ...)."""
    if isinstance(strategy, Strategy):
        if strategy_kwargs:
            raise ValueError(
                "strategy_kwargs: give them only with a strategy name, not an instance"
            )
        return strategy
    if isinstance(strategy, str):
        return make_strategy(strategy, **(strategy_kwargs or {}))
    raise TypeError(
        "strategy must be a lowrank_kernels.train Strategy or a name, "
        f"got {type(strategy).__name__}"
    )


class StrategyView:
    """The attributes strategies use: ``model``, ``optimizer``, ``task``, ``config``,
    ``total_steps``, ``device``.

    Args:
        get_model: returns the unwrapped model being trained.
        get_optimizer: returns the unwrapped ``torch.optim.Optimizer`` (ReLoRA prunes its state).
        filter_fn: ``(module, fqn) -> bool``, the layers the strategy may touch.
        example_input: a model input for the profiler (tensor, tuple or kwargs dict), or
            a callable returning one; None disables profiling verdicts.
        warmup_steps, min_lr_ratio, weight_decay: the LR shape and decay.
    """

    def __init__(
        self,
        get_model: Callable[[], nn.Module],
        get_optimizer: Callable[[], torch.optim.Optimizer | None],
        filter_fn: Callable[[nn.Module, str], bool] | None,
        example_input: Any = None,
        *,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        self._get_model = get_model
        self._get_optimizer = get_optimizer
        self._example_input = example_input
        self.total_steps = 1
        self.config = SimpleNamespace(
            warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay
        )
        self.task = SimpleNamespace(
            filter_fn=filter_fn, steps_per_epoch=1, example_input=self._example
        )

    @property
    def model(self) -> nn.Module:
        return self._get_model()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self._get_optimizer()

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _example(self, device: torch.device) -> Any:
        value = self._example_input() if callable(self._example_input) else self._example_input
        if value is None:
            raise ValueError(
                "example_input: the strategy profiles layers (profile=True) but no example "
                "input was given; pass example_input=... or profile=False"
            )
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in value)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside wrappers that hold ``.optimizer`` (accelerate)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def carry_state(old: Any, new: torch.optim.Optimizer) -> int:
    """Copy the optimizer state of every parameter ``new`` shares with ``old``; returns the count.

    After a structural switch the surviving parameters (embeddings, norms, layers kept
    dense) keep their Adam moments; the new factors start fresh.
    """
    if old is None:
        return 0
    old = unwrap_optimizer(old)
    kept = 0
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
                kept += 1
    return kept
