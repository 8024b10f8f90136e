"""The contract between a strategy and whatever runs it: :class:`StrategyContext`.

A strategy (:mod:`lowrank_kernels.train.strategies`) owns the model's structure and the
learning-rate shape; a *host* owns the loop. Three hosts exist — the package's
:class:`~lowrank_kernels.train.Trainer`, the Hugging Face ``LowRankTrainer``
(:mod:`lowrank_kernels.integrations.hf`) and the Lightning ``LowRankCallback``
(:mod:`lowrank_kernels.integrations.lightning`) — and each hands its strategy an object
that implements :class:`StrategyContext`. Strategies read and call nothing else, so a
new host only has to implement this protocol to run every strategy.

Also here, shared by the hosts:

* :class:`ProcessGroupDecisions`, the protocol's distributed members over the default
  ``torch.distributed`` process group (rank 0 decides, the others follow);
* :func:`carry_optimizer_state`, the single helper every host's ``rebuild_optimizer``
  uses to keep the optimizer state of parameters that survive a structural change;
* :func:`unwrap_optimizer`, the ``torch.optim.Optimizer`` inside wrappers (accelerate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from .. import distributed as dist_utils

T = TypeVar("T")

#: ``filter_fn(module, fqn) -> bool``: the layers a strategy may make low-rank.
FilterFn = Callable[[nn.Module, str], bool]


@runtime_checkable
class StrategyContext(Protocol):
    """Everything a strategy may read or call during a run; nothing else is promised.

    Read-only members may be plain attributes or properties in an implementation.
    The hooks receive the context as their first argument: ``setup(ctx)``,
    ``lr_factor(step, ctx)``, ``after_step(ctx, done)``, ``restore_model(ctx, state)``.
    """

    # -- what is being trained -----------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The unwrapped model (never a DDP/FSDP wrapper).

        Strategies replace its submodules in place (``set_submodule``,
        ``convert.factorize``); the host re-wraps and rebuilds the optimizer afterwards.
        """

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The unwrapped ``torch.optim.Optimizer`` (None before the host first built one).

        Strategies may edit its per-parameter ``state`` in place (ReLoRA prunes the Adam
        moments of its factors at a restart), never its parameter groups.
        """

    @property
    def step(self) -> int:
        """Completed optimizer steps (equals ``done`` inside ``after_step``)."""

    # -- the run's shape -----------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run (>= 1): the LR cosine's length and the
        default end of a strategy's search (half the run)."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training data (>= 1): Cuttlefish's
        default measurement interval."""

    @property
    def warmup_steps(self) -> int:
        """Linear LR warm-up at the start of the run; also the default re-warm-up after
        a structural switch."""

    @property
    def min_lr_ratio(self) -> float:
        """Final LR of the cosine decay relative to the peak LR."""

    @property
    def filter_fn(self) -> FilterFn | None:
        """``(module, fqn) -> bool``, the layers a strategy may touch (None: every
        candidate layer of ``convert.candidate_layers``)."""

    def example_input(self) -> Any:
        """A model input on the model's device, for timing layers at real shapes.

        Returns:
            A tensor, a tuple of positional arguments or a dict of keyword arguments
            (whatever ``model(...)`` takes). Raises ``ValueError`` when the host has none.
        """

    # -- distributed decisions -----------------------------------------------------------------

    def is_main_process(self) -> bool:
        """True on the process that makes every decision (rank 0; always True alone).

        Decisions that depend on timings or local measurements are made here and
        handed to the other processes with :meth:`broadcast_object`.
        """

    def broadcast_object(self, obj: T) -> T:
        """The main process's ``obj`` on every process (``obj`` itself in one process).

        A collective: every process must call it at the same point. For small,
        picklable decisions (ranks, verdicts), not for tensors.
        """

    def broadcast_tensor_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` (contiguous, same shape everywhere) in place with the
        main process's values; nothing in one process. A collective."""

    # -- host services -------------------------------------------------------------------------

    def rebuild_optimizer(self) -> None:
        """Re-create the optimizer over the model's current trainable parameters.

        Parameters that survived a structural change keep their optimizer state
        (:func:`carry_optimizer_state`); new ones start fresh. Hosts call it after a
        hook returned True; a strategy never needs to call it from ``after_step``.
        """

    def log_info(self, message: str) -> None:
        """Emit one line to the run's log (dropped where the host is silent and on
        every process but the main one)."""


class ProcessGroupDecisions:
    """The distributed members of :class:`StrategyContext` over the default process group.

    Every host's context inherits these, so rank 0 decides the same way in the package's
    trainer, under ``accelerate`` and under Lightning; without a process group they
    reduce to "this process decides".
    """

    def is_main_process(self) -> bool:
        """True on rank 0 or without ``torch.distributed``."""
        return dist_utils.is_main_process()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process (``obj`` itself without a process group)."""
        return dist_utils.broadcast_object(obj)

    def broadcast_tensor_(self, tensor: torch.Tensor) -> None:
        """Rank 0's values into ``tensor`` in place (nothing without a process group)."""
        if dist_utils.is_distributed():
            torch.distributed.broadcast(tensor, src=0)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside wrappers that hold ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``); ``optimizer`` itself
    when it is none of these.

    accelerate's wrapper subclasses ``torch.optim.Optimizer`` (and forwards ``state`` and
    ``param_groups``), so the loop follows ``.optimizer`` rather than stopping at the
    first ``Optimizer`` instance.
    """
    inner = getattr(optimizer, "optimizer", None)
    while inner is not None and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def carry_optimizer_state(old: Any, new: torch.optim.Optimizer) -> int:
    """Give ``new`` the state ``old`` holds for every parameter they share.

    The one helper behind every host's optimizer rebuild: after a structural switch
    the surviving parameters (embeddings, norms, layers kept dense) keep their moments
    and step counts, while the parameters that replaced others (fresh factors) start
    with empty state. The state objects are shared, not copied (``old`` is discarded).

    Args:
        old: the previous optimizer, possibly wrapped (see :func:`unwrap_optimizer`),
            or None (nothing to carry).
        new: the freshly built ``torch.optim.Optimizer``; its state is updated in place.

    Returns:
        The number of parameters whose state was carried over.
    """
    if old is None:
        return 0
    old = unwrap_optimizer(old)
    kept = 0
    for group in new.param_groups:
        for p in group["params"]:
            source = p.__dict__.pop(_STATE_SOURCE, None)
            if p in old.state:
                new.state[p] = old.state[p]
                kept += 1
            elif source is not None and source[0] in old.state:
                new.state[p] = source[1](old.state[source[0]])
                kept += 1
    return kept


# The attribute a parameter carries between :func:`inherit_optimizer_state` and the next
# :func:`carry_optimizer_state` (on the parameter, so every host's rebuild honours it).
_STATE_SOURCE = "_lowrank_optimizer_state_source"


def inherit_optimizer_state(
    new: torch.nn.Parameter,
    old: torch.nn.Parameter,
    derive: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Make the next :func:`carry_optimizer_state` give ``new`` the state
    ``derive(state of old)`` instead of an empty one.

    For a strategy that replaces a parameter by a reshaped one and wants its moments to
    follow (e.g. a factor truncated to fewer columns keeps the moments of those columns).
    ``derive`` gets the old state dict (``{"step", "exp_avg", "exp_avg_sq", ...}``) and
    returns the new one; it must not modify its argument in place.
    """
    new.__dict__[_STATE_SOURCE] = (old, derive)
