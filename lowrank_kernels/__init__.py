"""lowrank_kernels: fused low-rank layer kernels with autograd, drop-in modules and
low-rank training strategies for PyTorch. Design and public contract: docs/design.md."""

from ._version import __version__
from .convert import candidate_layers, factorize, merge, restore, summary
from .nn import LoRALinear, LowRankConv2d, LowRankLinear
from .ops import (
    available_backends,
    clear_dispatch_cache,
    dispatch_decisions,
    get_backend,
    lowrank_linear,
    set_backend,
)
from .profiler import profile_layers
from .rank import StableRankTracker, stable_rank, stable_ranks

__all__ = [
    "LoRALinear",
    "LowRankConv2d",
    "LowRankLinear",
    "StableRankTracker",
    "__version__",
    "available_backends",
    "candidate_layers",
    "clear_dispatch_cache",
    "dispatch_decisions",
    "factorize",
    "get_backend",
    "lowrank_linear",
    "merge",
    "profile_layers",
    "restore",
    "set_backend",
    "stable_rank",
    "stable_ranks",
    "summary",
]
