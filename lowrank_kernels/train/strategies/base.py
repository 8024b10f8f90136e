"""The base :class:`Strategy` (full-rank training) and :class:`FullRank`."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ... import convert
from ..context import StrategyContext
from ..schedule import warmup_cosine
from .factors import default_param_groups, frobenius_decay_, lowrank_modules


class Strategy:
    """Full-rank training (the baseline); the base class of every strategy.

    Every hook that needs the run gets a :class:`~lowrank_kernels.train.context.StrategyContext`
    ``ctx`` and may use only its members, so the same strategy runs under any host.
    ``switch_step`` is the step after which the structure became low-rank (None: not yet).
    """

    name = "full"

    #: Named sets of constructor options (see :func:`make_strategy`): ``"default"`` is this
    #: package's choice; a method with a published reference implementation also has
    #: ``"reference"``, the options that make it behave as that code does.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __init__(self) -> None:
        self.switch_step: int | None = None
        #: The preset this strategy was built from (set by :func:`make_strategy`).
        self.preset = "default"
        #: ``[{"step": int, "ranks": {fqn: rank}, "event": str}]``: every change of the
        #: low-rank layers' ranks (or, for ReLoRA, every restart), in step order.
        self.rank_history: list[dict[str, Any]] = []

    def record_ranks(self, step: int, ranks: dict[str, int], event: str) -> None:
        """Append ``{"step", "ranks", "event"}`` to :attr:`rank_history` (``event`` says what
        happened: ``"factorize"``, ``"switch"``, ``"grow"``, ``"freeze"``, ``"restart"``...)."""
        self.rank_history.append({"step": int(step), "ranks": dict(ranks), "event": event})

    def setup(self, ctx: StrategyContext) -> None:
        """Prepare ``ctx.model`` before step 0 (called once, not on resume)."""

    def lr_factor(self, step: int, ctx: StrategyContext) -> float:
        """Multiplier (float) of the base LR for optimizer step ``step`` (0-based)."""
        return warmup_cosine(step, ctx.total_steps, ctx.warmup_steps, ctx.min_lr_ratio)

    def decay_factors(self, model: nn.Module, step_size: float) -> None:
        """After each optimizer step: decoupled Frobenius decay of the low-rank factors."""
        frobenius_decay_(model, step_size)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for the current structure."""
        return default_param_groups(model, weight_decay)

    def after_step(self, ctx: StrategyContext, done: int) -> bool:
        """Called after ``done`` completed steps; True when parameters were replaced
        (the host then rebuilds the optimizer, see ``ctx.rebuild_optimizer``)."""
        return False

    def ranks(self, model: nn.Module) -> dict[str, int]:
        """Current ``{fqn: rank}`` of the layers this strategy made low-rank."""
        return {f: m.rank for f, m in lowrank_modules(model).items()}

    def report(self) -> dict[str, Any]:
        """Strategy-specific entries for the run report."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The strategy's progress (plain Python values) for a checkpoint, with its name."""
        return {
            "method": self.name,
            "preset": self.preset,
            "switch_step": self.switch_step,
            "rank_history": [dict(entry) for entry in self.rank_history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; called before :meth:`restore_model`.

        Raises:
            ValueError: ``state`` was saved by another strategy.
        """
        saved = state.get("method")
        if saved != self.name:
            raise ValueError(f"the strategy state was saved by method {saved!r}, not {self.name!r}")
        self.switch_step = state["switch_step"]
        self.preset = state["preset"]
        self.rank_history = [dict(entry) for entry in state["rank_history"]]

    def restore_model(self, ctx: StrategyContext, model_state: dict[str, torch.Tensor]) -> None:
        """Rebuild the checkpoint's structure on the fresh dense ``ctx.model``, then load
        ``model_state`` (``{name: tensor}``, the saved ``state_dict``) strictly."""
        if any(k.endswith((".V", ".conv_v.weight")) for k in model_state):
            convert.restore(ctx.model, model_state)
        else:
            ctx.model.load_state_dict(model_state)


class FullRank(Strategy):
    """Dense training with AdamW and warm-up + cosine LR: the baseline."""

    name = "full"
