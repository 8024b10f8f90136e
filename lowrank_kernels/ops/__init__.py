"""The low-rank linear op: registration, dispatch, validation, backends."""

from .dispatch import (
    available_backends,
    clear_dispatch_cache,
    dispatch_decisions,
    get_backend,
    resolve_backend,
    set_backend,
)
from .linear import lowrank_linear
from .validation import check_int, check_linear_inputs, check_rank, work_dtype

__all__ = [
    "available_backends",
    "check_int",
    "check_linear_inputs",
    "check_rank",
    "clear_dispatch_cache",
    "dispatch_decisions",
    "get_backend",
    "lowrank_linear",
    "resolve_backend",
    "set_backend",
    "work_dtype",
]
