"""Rank selection: stable rank, scaled stable rank, energy / explained-ratio ranks,
convergence detection and hardware-friendly rank rounding (docs/design.md,
Training strategies).

Every layer is seen through its weight *matrix* ``[out, in]`` — ``nn.Linear``'s weight,
a conv's weight reshaped to ``[out, in·kh·kw]``, the transpose of a ``transformers``
``Conv1D`` weight, or the product of a low-rank module's factors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .layers import (
    LOWRANK_TYPES,
    candidate_layers,
    full_rank,
    module_weight_matrix,
)
from .ops import check_int, work_dtype

__all__ = [
    "ConvergenceDetector",
    "StableRankTracker",
    "all_converged",
    "energy_rank",
    "explained_ratio",
    "explained_ratio_rank",
    "full_rank",
    "module_weight_matrix",
    "round_rank",
    "stable_rank",
    "stable_ranks",
]


# ---------------------------------------------------------------------------------------------
# Stable rank


def _as_matrix(weight: torch.Tensor | nn.Module, arg: str) -> torch.Tensor:
    if isinstance(weight, nn.Module):
        return module_weight_matrix(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor or a layer module, got {type(weight)}")
    if weight.dim() == 2:
        return weight.detach()
    if weight.dim() in (3, 4, 5):
        # conv weights [out, in, *kernel] are read as (out, in·prod(kernel))
        return weight.detach().reshape(weight.shape[0], -1)
    raise ValueError(
        f"{arg} must be a 2-D [out, in] matrix or a conv weight [out, in, *kernel], "
        f"got shape {tuple(weight.shape)}"
    )


def stable_rank(weight: torch.Tensor | nn.Module) -> float:
    """``‖W‖_F² / ‖W‖_2²`` of a weight (``[out, in]``, or a conv's ``[out, in, kh, kw]`` read as
    ``[out, in·kh·kw]``) or of a layer module's weight matrix.

    Computed from the singular values in fp32 (fp64 for fp64 input) on the weight's
    device. Lies in ``[1, min(out, in)]`` for a nonzero matrix; an all-zero matrix has
    stable rank 0.

    Raises:
        ValueError: the weight has NaN/Inf entries or an unsupported number of dims.
    """
    return float(_stable_ranks64([_as_matrix(weight, "weight")])[0].item())


def stable_ranks(weights: Sequence[torch.Tensor | nn.Module]) -> torch.Tensor:
    """Stable ranks of many weights at once: a float tensor ``[len(weights)]``.

    Weights of equal matrix shape, device and working dtype are stacked and go through one
    batched ``torch.linalg.svdvals`` call per group (fp32, fp64 for fp64 input, on the
    weights' device). The result lives on the first weight's device.

    Raises:
        ValueError: a weight has NaN/Inf entries (the error names its index) or bad dims.
    """
    mats = [_as_matrix(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if not mats:
        return torch.empty(0)
    return _stable_ranks64(mats).to(device=mats[0].device, dtype=torch.float32)


def _stable_ranks64(mats: list[torch.Tensor]) -> torch.Tensor:
    """Stable ranks of 2-D matrices as a float64 CPU tensor (computed in fp32 / fp64)."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.device, work_dtype(m)), []).append(i)
    result = torch.empty(len(mats), dtype=torch.float64)
    for (_, _, work), idx in groups.items():
        stack = torch.stack([mats[i] for i in idx]).to(work)
        finite = torch.isfinite(stack).flatten(1).all(dim=1).cpu()
        if not bool(finite.all()):
            bad = [idx[j] for j in range(len(idx)) if not bool(finite[j])]
            raise ValueError(
                f"stable_rank: weights{bad} contain NaN or Inf entries; the stable rank is "
                "undefined"
            )
        s = torch.linalg.svdvals(stack)  # [G, min(out, in)], descending
        top = s[:, 0]
        fro2 = (s * s).sum(dim=1)
        ranks = torch.where(top > 0, fro2 / (top * top).clamp_min(torch.finfo(work).tiny), 0.0)
        result[idx] = ranks.double().cpu()
    return result


# ---------------------------------------------------------------------------------------------
# Ranks from singular values


def _singular_values(s: torch.Tensor | Sequence[float] | np.ndarray, arg: str) -> np.ndarray:
    arr = s.detach().double().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{arg} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{arg} must be finite and non-negative (singular values)")
    return np.sort(arr)[::-1]


def energy_rank(singular_values: torch.Tensor | Sequence[float], fraction: float) -> int:
    """Smallest ``r >= 1`` with ``Σ_{i<r} s_i² >= fraction · Σ s_i²`` (s sorted descending).

    Args:
        singular_values: ``[n]`` singular values (any order).
        fraction: kept energy, in ``(0, 1]``.

    An all-zero spectrum returns 1.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a float in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s = _singular_values(singular_values, "singular_values")
    energy = np.cumsum(s * s)
    total = energy[-1]
    if total == 0:
        return 1
    # total is the last cumulative sum itself, so fraction = 1 reaches exactly n
    r = int(np.searchsorted(energy, fraction * total, side="left")) + 1
    return min(max(r, 1), s.size)


def explained_ratio(singular_values: torch.Tensor | Sequence[float], k: int) -> float:
    """InRank's explained ratio ``1 − Var(s − s_k) / Var(s)``.

    ``s`` is sorted descending and ``s_k`` is ``s`` with the entries beyond the first ``k``
    zeroed, so ``s − s_k`` is the discarded tail (zeros in front). A flat spectrum
    (``Var(s) = 0``) explains nothing until ``k = n``: 0.0 for ``k < n``, 1.0 at ``k = n``.
    """
    s = _singular_values(singular_values, "singular_values")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= s.size:
        raise ValueError(f"k must be an int in [0, {s.size}], got {k!r}")
    tail = s.copy()
    tail[:k] = 0.0
    var_s = float(np.var(s))
    if var_s == 0.0:
        return 1.0 if k >= s.size else 0.0
    return 1.0 - float(np.var(tail)) / var_s


def explained_ratio_rank(
    singular_values: torch.Tensor | Sequence[float], threshold: float = 0.9
) -> int:
    """InRank's rank: the smallest ``k >= 1`` with ``explained_ratio(s, k) > threshold``.

    Args:
        singular_values: ``[n]`` singular values.
        threshold: in ``(0, 1)``; InRank uses 0.9.

    Returns ``n`` when no smaller k clears the threshold.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float in (0, 1), got {threshold!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    s = _singular_values(singular_values, "singular_values")
    n = s.size
    var_s = float(np.var(s))
    if var_s == 0.0:
        return n
    # Var of the tail for every k at once from suffix sums: Var(t) = E[t²] − E[t]².
    suffix = np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]])
    suffix_sq = np.concatenate([np.cumsum((s * s)[::-1])[::-1], [0.0]])
    var_tail = np.maximum(suffix_sq / n - (suffix / n) ** 2, 0.0)
    ratios = 1.0 - var_tail[1:] / var_s  # ratios[k-1] is the explained ratio at k
    hits = np.nonzero(ratios > threshold)[0]
    return int(hits[0]) + 1 if hits.size else n


def round_rank(rank: int | float, multiple: int = 8, full_rank: int | None = None) -> int:
    """Round ``rank`` UP to a multiple of ``multiple``, never above ``full_rank``, never below 1.

    Tensor-core GEMMs run fastest when the inner size is a multiple of 8 (fp16/bf16) or
    16; a rank just above a multiple costs almost a full extra tile anyway.
    Non-integral ranks are first rounded up (``ceil``).
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank):
        raise TypeError(f"rank must be a finite number, got {rank!r}")
    check_int(multiple, "multiple (rank_multiple)")
    if full_rank is not None and (
        isinstance(full_rank, bool) or not isinstance(full_rank, int) or full_rank < 1
    ):
        raise ValueError(f"full_rank must be a positive int or None, got {full_rank!r}")
    r = max(1, math.ceil(rank))
    r = -(-r // multiple) * multiple
    if full_rank is not None:
        r = min(r, full_rank)
    return max(r, 1)


# ---------------------------------------------------------------------------------------------
# Convergence detection (Cuttlefish)


def _ema(values: Sequence[float], span: int) -> np.ndarray:
    alpha = 2.0 / (span + 1.0)
    out = np.empty(len(values), dtype=np.float64)
    acc = float(values[0])
    for i, v in enumerate(values):
        acc = acc if i == 0 else alpha * float(v) + (1.0 - alpha) * acc
        out[i] = acc
    return out


class ConvergenceDetector:
    """Decides when one per-epoch series (e.g. a layer's stable rank) has stopped moving.

    Following the Cuttlefish reference: smooth the series with an EMA of span ``span``
    (``α = 2/(span+1)``, seeded with the first value), take its derivative with
    ``numpy.gradient`` (central differences inside, one-sided at the ends), and call
    the series converged when the mean ``|derivative|`` over the last ``window`` points
    is ``<= tol``. The check only starts once ``max(span + 1, window + 1, warmup)``
    values were seen — the reference waits ``span`` epochs after the initial record —
    and, as in the reference, a converged series stays converged (latched).

    Args:
        span: EMA span (Cuttlefish: 15).
        window: number of trailing derivatives averaged (Cuttlefish: 11).
        tol: threshold on the mean |derivative| in the series' units (Cuttlefish: 0.1).
        warmup: never report convergence before this many values.
    """

    def __init__(self, span: int = 15, window: int = 11, tol: float = 0.1, warmup: int = 0):
        for name, value, low in (("span", span, 1), ("window", window, 1), ("warmup", warmup, 0)):
            check_int(value, name, minimum=low)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        self.span = span
        self.window = window
        self.tol = float(tol)
        self.warmup = warmup
        self.values: list[float] = []
        self.converged = False
        self.converged_at: int | None = None

    @property
    def min_history(self) -> int:
        """Number of values needed before convergence can be reported."""
        return max(self.span + 1, self.window + 1, self.warmup)

    def mean_abs_derivative(self) -> float | None:
        """Mean |EMA derivative| over the last ``window`` points, or None with < 2 values."""
        if len(self.values) < 2:
            return None
        grad = np.abs(np.gradient(_ema(self.values, self.span)))
        return float(grad[-self.window :].mean())

    def update(self, value: float) -> bool:
        """Append one value and return whether the series has converged (latched)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"ConvergenceDetector.update: value must be finite, got {value}")
        self.values.append(value)
        if not self.converged and len(self.values) >= self.min_history:
            mean_d = self.mean_abs_derivative()
            if mean_d is not None and mean_d <= self.tol:
                self.converged = True
                self.converged_at = len(self.values)
        return self.converged

    def reset(self) -> None:
        """Forget the series."""
        self.values.clear()
        self.converged = False
        self.converged_at = None


def all_converged(
    histories: Mapping[str, Sequence[float]],
    span: int = 15,
    window: int = 11,
    tol: float = 0.1,
    warmup: int = 0,
) -> bool:
    """Whether every series in ``histories`` (``{name: values}``) has converged.

    Each series is replayed through a fresh ``ConvergenceDetector(span, window, tol,
    warmup)``, so a series that converged at some epoch counts as converged (latched).

    Raises:
        ValueError: ``histories`` is empty (nothing tracked cannot be "converged").
    """
    if not histories:
        raise ValueError("all_converged: histories is empty; track at least one layer")
    for values in histories.values():
        det = ConvergenceDetector(span=span, window=window, tol=tol, warmup=warmup)
        for v in values:
            det.update(v)
        if not det.converged:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Scaled stable rank tracker (Cuttlefish)


class StableRankTracker:
    """Tracks the stable rank of a model's factorizable layers over training.

    On construction it records ``ξ_l = full_rank_l / srank(W_0,l)`` for every candidate
    layer (``lowrank_kernels.layers.candidate_layers(model, filter_fn)`` plus layers that
    are already low-rank). ``update()`` (call once per epoch) appends the current stable
    ranks to ``history``; ``scaled_ranks()`` turns the latest ones into Cuttlefish's
    scaled stable ranks ``ceil(srank(W_t)·ξ)``. Layers are looked up by name at every
    call, so the tracker keeps working after ``factorize`` replaces them.

    Args:
        model: the model to track.
        filter_fn: ``(module, fqn) -> bool`` selecting layers, as in ``factorize``.
    """

    def __init__(
        self, model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        layers = dict(candidate_layers(model, filter_fn))
        for fqn, module in model.named_modules():
            if isinstance(module, LOWRANK_TYPES) and (filter_fn is None or filter_fn(module, fqn)):
                layers[fqn] = module
        if not layers:
            raise ValueError(
                "StableRankTracker: the model has no Linear/Conv2d/Conv1D layer to track"
                + (" that passes filter_fn" if filter_fn is not None else "")
            )
        self.fqns: list[str] = list(layers)
        self.full_ranks: dict[str, int] = {f: full_rank(m) for f, m in layers.items()}
        self.history: dict[str, list[float]] = {f: [] for f in self.fqns}
        self.initial: dict[str, float] = {}
        self.xi: dict[str, float] = {}
        self.record_initial()

    def _modules(self) -> list[nn.Module]:
        named = dict(self.model.named_modules())
        missing = [f for f in self.fqns if f not in named]
        if missing:
            raise RuntimeError(f"StableRankTracker: tracked layers {missing} left the model")
        return [named[f] for f in self.fqns]

    def current(self) -> dict[str, float]:
        """Current stable ranks ``{fqn: srank}`` (one batched SVD per shape), not recorded."""
        ranks = stable_ranks(self._modules()).tolist()
        return dict(zip(self.fqns, ranks, strict=True))

    def record_initial(self) -> dict[str, float]:
        """Record ``ξ = full_rank / srank(W_0)`` from the current weights; returns ``ξ``.

        Raises:
            ValueError: a layer's weight is all zero (its stable rank is 0).
        """
        init = self.current()
        zero = [f for f, s in init.items() if s <= 0]
        if zero:
            raise ValueError(
                f"StableRankTracker: layers {zero} have all-zero weights; ξ = full_rank / "
                "srank(W_0) is undefined"
            )
        self.initial = init
        self.xi = {f: self.full_ranks[f] / s for f, s in init.items()}
        return dict(self.xi)

    def update(self) -> dict[str, float]:
        """Compute the current stable ranks, append them to ``history`` and return them."""
        ranks = self.current()
        for f, s in ranks.items():
            self.history[f].append(s)
        return ranks

    def scaled_ranks(self, rank_multiple: int = 8) -> dict[str, int]:
        """``{fqn: round_rank(ceil(srank·ξ), rank_multiple, full_rank)}`` from the latest
        recorded stable ranks (the current weights if ``update`` was never called),
        clamped to ``[1, full_rank]``."""
        latest = (
            {f: h[-1] for f, h in self.history.items()}
            if all(self.history.values())
            else self.current()
        )
        out = {}
        for f, s in latest.items():
            full = self.full_ranks[f]
            # a tiny epsilon keeps ceil(srank·full/srank) from landing on full + 1 by rounding
            scaled = math.ceil(s * self.xi[f] - 1e-9)
            out[f] = round_rank(min(max(scaled, 1), full), rank_multiple, full)
        return out

    def converged(
        self, span: int = 15, window: int = 11, tol: float = 0.1, warmup: int = 0
    ) -> bool:
        """``all_converged(self.history, ...)``: every tracked layer's history has converged."""
        return all_converged(self.history, span=span, window=window, tol=tol, warmup=warmup)
