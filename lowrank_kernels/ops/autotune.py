"""The ``auto`` selection on GPUs: per shape, the backend it measured fastest.

The first time a chain shape (bucketed M, exact K, N, r, dtype, bias, intermediate,
operand layout: ``measurement.ChainKey``) is seen on a CUDA device, every backend that
can run it is timed on the real operands (CUDA events, median of a few runs) and the
fastest is cached. So ``auto`` never runs a fused kernel that it measured slower than
the PyTorch chain. (The Triton backend tunes its own launch configuration the same way,
see ``backends/triton_backend.py``.) The cache is inspectable with
:func:`~lowrank_kernels.ops.dispatch.dispatch_decisions`.

Measurement is skipped (the first runnable backend instead, nothing cached) where
``measurement.measurement_allowed`` says so: during CUDA graph capture, and when
``LOWRANK_KERNELS_AUTOTUNE=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backends.base import ChainBackend
from .measurement import (
    ChainKey,
    Decision,
    Timer,
    chain_key,
    cuda_event_timer,
    measure_fastest,
    measurement_allowed,
)


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
        key = chain_key(a, b, c, bias, write_intermediate)
        decision = self.decisions.get(key)
        if decision is None:
            runnable = self._runnable(a.device)
            if len(runnable) == 1 or not measurement_allowed(a.device):
                return runnable[0].chain(a, b, c, bias, write_intermediate)
            decision = measure_fastest(
                {
                    backend.name: (
                        lambda backend=backend: backend.chain(a, b, c, bias, write_intermediate)
                    )
                    for backend in runnable
                },
                self.timer,
            )
            self.decisions[key] = decision
        backend = next(b for b in self.candidates if b.name == decision.choice)
        return backend.chain(a, b, c, bias, write_intermediate)
