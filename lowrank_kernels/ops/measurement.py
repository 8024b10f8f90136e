"""Per-shape measurement primitives shared by the ``auto`` dispatch and the Triton
backend's configuration tuning: the cache key of a chain call, the decision record, and
the policy of when timing may run.

Measurement is skipped while a CUDA graph is being captured (timing would be recorded
into the graph) and when ``LOWRANK_KERNELS_AUTOTUNE=0``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .timing import median_ms

Timer = Callable[[Callable[[], object]], float]


class ChainKey(NamedTuple):
    """What a measured decision is cached on; M only by bucket, never exactly.

    ``layout`` names, for ``a``, ``b`` and ``c``, the unit-stride dimension (``r`` for
    rows, ``c`` for columns, ``s`` for neither): the forward (``x·V·U``) and the dX chain
    (``dY·Uᵀ·Vᵀ``) of a square layer have the same sizes but not the same memory access.
    """

    device: str
    dtype: str
    m_bucket: int
    K: int
    N: int
    r: int
    has_bias: bool
    write_intermediate: bool
    layout: str


@dataclass(frozen=True)
class Decision:
    """The chosen candidate's name and every candidate's measured median milliseconds."""

    choice: str
    times_ms: dict[str, float] = field(default_factory=dict)


def m_bucket(M: int) -> int:
    """The next power of two ≥ M (1 for M ≤ 1)."""
    return 1 << max(M - 1, 0).bit_length()


def _unit_stride_dim(t: torch.Tensor) -> str:
    if t.stride(-1) == 1:
        return "r"
    return "c" if t.stride(0) == 1 else "s"


def chain_key(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bias: torch.Tensor | None,
              write_intermediate: bool) -> ChainKey:  # fmt: skip
    """The cache key of one chain call ``(a·b)·c + bias`` (shapes as in ``ChainBackend``)."""
    return ChainKey(
        str(a.device),
        str(a.dtype).removeprefix("torch."),
        m_bucket(a.shape[0]),
        a.shape[1],
        c.shape[1],
        b.shape[1],
        bias is not None,
        write_intermediate,
        "".join(_unit_stride_dim(t) for t in (a, b, c)),
    )


def cuda_event_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (2 warm-up, 5 timed runs)."""
    return median_ms(fn, torch.device("cuda"))


def measurement_allowed(device: torch.device) -> bool:
    """Whether timing may run now: no CUDA graph is being captured on ``device`` and
    ``LOWRANK_KERNELS_AUTOTUNE`` is not set to 0/false/off."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return os.environ.get("LOWRANK_KERNELS_AUTOTUNE", "1").strip().lower() not in {
        "0",
        "false",
        "off",
    }


def measure_fastest(candidates: Mapping[str, Callable[[], object]], timer: Timer) -> Decision:
    """Time every candidate with ``timer`` and return the fastest with all the times."""
    times = {name: timer(run) for name, run in candidates.items()}
    return Decision(min(times, key=times.__getitem__), times)
