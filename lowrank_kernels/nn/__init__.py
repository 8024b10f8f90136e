"""Drop-in low-rank modules."""

from .conv import LowRankConv2d
from .linear import LowRankLinear, truncated_svd_factors
from .lora import LoRALinear

__all__ = [
    "LoRALinear",
    "LowRankConv2d",
    "LowRankLinear",
    "truncated_svd_factors",
]
