"""lowrank_kernels: fused low-rank layer kernels with autograd, drop-in modules and
low-rank training strategies for PyTorch. See DESIGN §3 for the public contract."""

from ._version import __version__
from .nn import LowRankLinear
from .ops import (
    available_backends,
    clear_dispatch_cache,
    dispatch_decisions,
    get_backend,
    lowrank_linear,
    set_backend,
)

__all__ = [
    "LowRankLinear",
    "__version__",
    "available_backends",
    "clear_dispatch_cache",
    "dispatch_decisions",
    "get_backend",
    "lowrank_linear",
    "set_backend",
]
