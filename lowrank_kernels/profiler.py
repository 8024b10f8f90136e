"""Per-layer speed profiler: is the low-rank layer actually faster at this rank, here?

Cuttlefish keeps "the first K layers" full rank because on real hardware a
factorized layer with a small ``in·k·k`` or a large spatial size can be slower than
the dense one. Instead of hard-coding K, ``profile_layers`` runs the model once on
an example input, captures each candidate layer's real input with forward
pre-hooks, and times the dense layer against a low-rank layer of the chosen rank on
that input, on the model's device (CUDA events on GPU, ``time.perf_counter`` on CPU,
median of ``repeats`` after warm-up).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import check_layer_rank, dense_kind, lowrank_like
from .ops import check_int
from .ops.timing import median_ms

__all__ = ["LayerTiming", "default_timer", "profile_layers"]

Timer = Callable[[nn.Module, torch.Tensor, int], float]


@dataclass
class LayerTiming:
    """Median time in seconds of one layer on its captured input, dense vs low-rank."""

    fqn: str
    rank: int
    input_shape: tuple[int, ...]
    dense_s: float
    lowrank_s: float

    @property
    def speedup(self) -> float:
        """``dense_s / lowrank_s`` (> 1 means the low-rank layer is faster)."""
        return self.dense_s / self.lowrank_s if self.lowrank_s > 0 else float("inf")


def default_timer(
    module: nn.Module, x: torch.Tensor, repeats: int, *, backward: bool = False, warmup: int = 2
) -> float:
    """Median seconds of ``module(x)`` (plus its backward when ``backward``) over ``repeats``.

    On CUDA each repeat is timed with a pair of CUDA events; elsewhere with
    ``time.perf_counter`` around the call.
    """

    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        if backward:
            xi = x.detach().requires_grad_(x.is_floating_point())
            out = module(xi)
            # autograd.grad instead of .backward(): the layer's .grad fields stay untouched
            wrt = [xi, *params] if xi.requires_grad else params
            torch.autograd.grad(out, wrt, torch.ones_like(out))
        else:
            with torch.no_grad():
                module(x)

    return median_ms(step, x.device, warmup=warmup, repeats=repeats) / 1e3


def call_model(model: nn.Module, example_input: Any) -> Any:
    """Run ``model`` on ``example_input``: a dict is passed as kwargs, a tuple/list as
    positional args, anything else as the single argument."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def profile_layers(
    model: nn.Module,
    example_input: Any,
    ranks: Mapping[str, int],
    *,
    repeats: int = 10,
    timer: Timer | None = None,
    backward: bool = False,
) -> dict[str, LayerTiming]:
    """Time each layer in ``ranks`` dense vs low-rank at its rank, on its real input.

    Args:
        model: the (dense) model; it is run once in eval mode under ``torch.no_grad``
            on ``example_input`` to capture every listed layer's first input (its
            train/eval flags are restored afterwards).
        example_input: a tensor, a tuple of positional args or a dict of kwargs.
        ranks: ``{fqn: rank}`` of ``nn.Linear`` / ``nn.Conv2d`` / ``Conv1D`` layers.
        repeats: timed repetitions per variant (the median is kept).
        timer: ``(module, x, repeats) -> seconds``; defaults to ``default_timer``
            (inject a fake one in tests).
        backward: time forward + backward instead of forward only (default timer).

    Returns:
        ``{fqn: LayerTiming}`` for the layers the example input reached (layers it did
        not reach are left out).

    Raises:
        ValueError: an fqn is not a layer of the model, or a rank is out of range.
        TypeError: a listed module is not a Linear/Conv2d/Conv1D layer.
    """

    check_int(repeats, "repeats", owner="profile_layers")
    named = dict(model.named_modules())
    targets: dict[str, nn.Module] = {}
    for fqn, r in ranks.items():
        if fqn not in named:
            raise ValueError(f"profile_layers: ranks names {fqn!r}, which is not in the model")
        module = named[fqn]
        if dense_kind(module) is None:
            raise TypeError(
                f"profile_layers: layer {fqn!r} must be an nn.Linear, nn.Conv2d or transformers "
                f"Conv1D, got {type(module).__name__}"
            )
        check_layer_rank(r, fqn, module, "profile_layers")
        targets[fqn] = module

    captured: dict[str, torch.Tensor] = {}

    def hook_for(fqn: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if fqn not in captured and args and isinstance(args[0], torch.Tensor):
                captured[fqn] = args[0].detach()

        return hook

    handles = [m.register_forward_pre_hook(hook_for(f)) for f, m in targets.items()]
    # eval mode for the capture run, so it does not update BatchNorm running stats
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    if timer is None:

        def timer(module: nn.Module, x: torch.Tensor, n: int) -> float:
            return default_timer(module, x, n, backward=backward)

    result: dict[str, LayerTiming] = {}
    for fqn, module in targets.items():
        x = captured.get(fqn)
        if x is None:
            continue
        lowrank = lowrank_like(module, ranks[fqn])
        lowrank.train(module.training)
        dense_s = float(timer(module, x, repeats))
        lowrank_s = float(timer(lowrank, x, repeats))
        result[fqn] = LayerTiming(fqn, int(ranks[fqn]), tuple(x.shape), dense_s, lowrank_s)
    return result
