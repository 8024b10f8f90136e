"""Training strategies: ``full``, ``fixed``, ``cuttlefish``, ``relora`` and ``inrank``.

A strategy owns the model's *structure* over a run (which layers are low-rank, at what
rank, when that changes) and the learning-rate shape; a host (the package's
:class:`~lowrank_kernels.train.Trainer`, or the Hugging Face / Lightning integrations)
owns the loop. A strategy sees the run only through a
:class:`~lowrank_kernels.train.context.StrategyContext` ``ctx``. Hooks, in the order the
host calls them:

* ``setup(ctx)`` once before the first step (not on resume);
* per step: ``lr_factor(step, ctx)``; after the optimizer step
  ``decay_factors(model, lr·weight_decay)`` (decoupled Frobenius decay of the factors)
  and ``after_step(ctx, done)`` with ``done`` the number of completed steps;
  it returns True when it replaced parameters, and the host then rebuilds the
  optimizer (keeping the state of every parameter that survived);
* ``state_dict()`` / ``load_state_dict(state)`` and ``restore_model(ctx, model_state)``
  for checkpoints: the latter rebuilds the saved structure and loads the weights strictly.

Under ``torchrun`` every decision (convergence, ranks, profiler verdicts, growth) is made on
the main process (``ctx.is_main_process()``) and broadcast (``ctx.broadcast_object``), so
every process changes the structure at the same step in the same way; the trainer then
copies rank 0's weights to the other processes and re-wraps the model.

Layers are changed only through the public API (``convert.factorize`` / ``restore``,
``LowRankLinear``, ``LowRankConv2d``, ``LoRALinear``), so GPUs get the fused kernels.

One module per strategy: :mod:`.base` (``Strategy``, ``FullRank``), :mod:`.fixed`,
:mod:`.cuttlefish`, :mod:`.relora`, :mod:`.inrank`; shared helpers in :mod:`.factors`.
"""

from __future__ import annotations

from typing import Any

from .base import FullRank, Strategy
from .cuttlefish import Cuttlefish
from .factors import (
    LOWRANK_TYPES,
    default_param_groups,
    factor_parameters,
    frobenius_decay_,
    frobenius_penalty,
    lowrank_modules,
)
from .fixed import Fixed
from .inrank import InRank
from .relora import ReLoRA, magnitude_prune_

STRATEGIES: dict[str, type[Strategy]] = {
    "full": FullRank,
    "fixed": Fixed,
    "cuttlefish": Cuttlefish,
    "relora": ReLoRA,
    "inrank": InRank,
}


def make_strategy(name: str, *, preset: str = "default", **kwargs: Any) -> Strategy:
    """Build strategy ``name`` (one of :data:`STRATEGIES`).

    Args:
        name: the method.
        preset: a key of the class's ``PRESETS``: ``"default"`` (this package's choices)
            or, where the method has one, ``"reference"`` (behave as the method's reference
            implementation does; see docs/training.md). Its options are applied first.
        kwargs: constructor options; each one overrides the preset's value.
    """
    if name not in STRATEGIES:
        raise ValueError(f"make_strategy: method must be one of {sorted(STRATEGIES)}, got {name!r}")
    cls = STRATEGIES[name]
    if preset not in cls.PRESETS:
        raise ValueError(
            f"make_strategy: preset for method {name!r} must be one of {sorted(cls.PRESETS)}, "
            f"got {preset!r}"
        )
    try:
        strategy = cls(**{**cls.PRESETS[preset], **kwargs})
    except TypeError as exc:
        raise TypeError(f"make_strategy: bad options for method {name!r}: {exc}") from exc
    strategy.preset = preset
    return strategy


__all__ = [
    "LOWRANK_TYPES",
    "STRATEGIES",
    "Cuttlefish",
    "Fixed",
    "FullRank",
    "InRank",
    "ReLoRA",
    "Strategy",
    "default_param_groups",
    "factor_parameters",
    "frobenius_decay_",
    "frobenius_penalty",
    "lowrank_modules",
    "magnitude_prune_",
    "make_strategy",
]
