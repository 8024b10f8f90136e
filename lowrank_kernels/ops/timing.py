"""The one timer used for in-process measurements (dispatch decisions, layer profiling)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 2,
              repeats: int = 5) -> float:  # fmt: skip
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    On CUDA each run is bracketed by CUDA events on the current stream; elsewhere by
    ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
