"""Measured per-shape choice among backends for the ``auto`` selection on GPUs.

The first time a chain shape (bucketed M, exact K, N, r, dtype, bias, intermediate)
is seen on a CUDA device, every backend that can run it is timed on the real
operands (CUDA events, median of a few runs) and the fastest is cached. So ``auto``
never runs a fused kernel that it measured slower than the PyTorch chain.
The cache is inspectable with :func:`dispatch_decisions`.

Measurement is skipped (preference order triton → cuda → torch instead) while a
CUDA graph is being captured, and when ``LOWRANK_KERNELS_AUTOTUNE=0``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .backends.base import ChainBackend
from .timing import median_ms

Timer = Callable[[Callable[[], object]], float]


class ChainKey(NamedTuple):
    """What a dispatch decision is cached on; M only by bucket, never exactly."""

    device: str
    dtype: str
    m_bucket: int
    K: int
    N: int
    r: int
    has_bias: bool
    write_intermediate: bool


@dataclass(frozen=True)
class Decision:
    backend: str
    times_ms: dict[str, float] = field(default_factory=dict)


def m_bucket(M: int) -> int:
    """The next power of two ≥ M (1 for M ≤ 1)."""
    return 1 << max(M - 1, 0).bit_length()


def cuda_event_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (2 warm-up, 5 timed runs)."""
    return median_ms(fn, torch.device("cuda"))


def _autotune_enabled() -> bool:
    return os.environ.get("LOWRANK_KERNELS_AUTOTUNE", "1").strip().lower() not in {
        "0",
        "false",
        "off",
    }


class MeasuredDispatch(ChainBackend):
    """A chain backend that runs, per shape, whichever candidate it measured fastest.

    Args:
        candidates: backends in preference order; those that cannot run on a device are
            skipped for it.
        timer: ``timer(fn) -> ms``; CUDA events by default (injectable for tests).
    """

    name = "auto"

    def __init__(self, candidates: Sequence[ChainBackend], timer: Timer | None = None) -> None:
        self.candidates = list(candidates)
        self.timer = timer or cuda_event_timer
        self.decisions: dict[ChainKey, Decision] = {}

    def is_available(self) -> bool:
        return True

    def unsupported_reason(self, device: torch.device) -> str | None:
        if not self._runnable(device):
            return f"no backend can run on {device}"
        return None

    def _runnable(self, device: torch.device) -> list[ChainBackend]:
        return [b for b in self.candidates if b.unsupported_reason(device) is None]

    def chain(self, a, b, c, bias, write_intermediate):
        key = ChainKey(
            str(a.device),
            str(a.dtype).removeprefix("torch."),
            m_bucket(a.shape[0]),
            a.shape[1],
            c.shape[1],
            b.shape[1],
            bias is not None,
            write_intermediate,
        )
        decision = self.decisions.get(key)
        if decision is None:
            runnable = self._runnable(a.device)
            capturing = a.is_cuda and torch.cuda.is_current_stream_capturing()
            if len(runnable) == 1 or capturing or not _autotune_enabled():
                return runnable[0].chain(a, b, c, bias, write_intermediate)
            times = {
                backend.name: self.timer(
                    lambda backend=backend: backend.chain(a, b, c, bias, write_intermediate)
                )
                for backend in runnable
            }
            decision = Decision(min(times, key=times.__getitem__), times)
            self.decisions[key] = decision
        backend = next(b for b in self.candidates if b.name == decision.backend)
        return backend.chain(a, b, c, bias, write_intermediate)
