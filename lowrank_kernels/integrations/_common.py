"""What the framework integrations share: picking the strategy and the part of a
:class:`~lowrank_kernels.train.context.StrategyContext` that does not depend on the framework.

Each integration subclasses :class:`FrameworkContext` and fills in what its framework
owns (the model, the optimizer, the step counter, how the optimizer is rebuilt), so
Cuttlefish, ReLoRA and InRank make exactly the same decisions (rank 0 decides under
``torch.distributed``) inside a Hugging Face or Lightning loop as in the package's trainer.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import torch
from torch import nn

from ..train.context import FilterFn, ProcessGroupDecisions
from ..train.strategies import Strategy, make_strategy

logger = logging.getLogger("lowrank_kernels.integrations")


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


def move_example(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, a kwargs dict or a tuple of positional arguments) with every
    tensor in it moved to ``device``; other entries are passed through unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
    return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in value)


class FrameworkContext(ProcessGroupDecisions, abc.ABC):
    """The framework-independent half of a :class:`StrategyContext` for an integration.

    Holds the run's shape as plain attributes the integration updates once the
    framework knows them (``total_steps``, ``steps_per_epoch``, ``warmup_steps``), the
    layer filter and the profiler's example input. Subclasses provide ``model``,
    ``optimizer``, ``step`` and ``rebuild_optimizer``.

    Args:
        filter_fn: ``(module, fqn) -> bool``, the layers the strategy may touch.
        example_input: a model input for the profiler (tensor, tuple or kwargs dict), or
            a callable returning one; None: the strategy may not profile.
        warmup_steps, min_lr_ratio: the LR shape (warm-up length, final LR ratio).
    """

    def __init__(
        self,
        filter_fn: FilterFn | None,
        example_input: Any = None,
        *,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
    ) -> None:
        self.filter_fn = filter_fn
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        # Placeholders until the framework knows the run's length (before fit starts).
        self.total_steps = 1
        self.steps_per_epoch = 1
        self._example_input = example_input

    @property
    @abc.abstractmethod
    def model(self) -> nn.Module:
        """The unwrapped model being trained."""

    @property
    @abc.abstractmethod
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The unwrapped optimizer (None before the framework created one)."""

    @property
    @abc.abstractmethod
    def step(self) -> int:
        """Completed optimizer steps (the framework's global step)."""

    @abc.abstractmethod
    def rebuild_optimizer(self) -> None:
        """Re-create the framework's optimizer over the current parameters, carrying the
        state of surviving parameters (``carry_optimizer_state``)."""

    def example_input(self) -> Any:
        """The example input on the model's device (raises ``ValueError`` without one)."""
        value = self._example_input() if callable(self._example_input) else self._example_input
        if value is None:
            raise ValueError(
                "example_input: the strategy profiles layers (profile=True) but no example "
                "input was given; pass example_input=... or profile=False"
            )
        param = next(self.model.parameters(), None)
        return move_example(value, param.device if param is not None else torch.device("cpu"))

    def log_info(self, message: str) -> None:
        """INFO on the ``lowrank_kernels.integrations`` logger, main process only."""
        if self.is_main_process():
            logger.info(message)
