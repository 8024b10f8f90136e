"""Drop-in low-rank modules."""

from .linear import LowRankLinear, truncated_svd_factors

__all__ = ["LowRankLinear", "truncated_svd_factors"]
