"""Drop-in low-rank modules."""

from .conv import LowRankConv2d
from .linear import LowRankLinear, truncated_svd_factors

__all__ = ["LowRankConv2d", "LowRankLinear", "truncated_svd_factors"]
