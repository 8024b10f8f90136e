"""``fixed``: factorize at a fixed rank before step 0."""

from __future__ import annotations

from typing import Any

from ... import convert
from ...ops import check_int
from ..context import StrategyContext
from .base import Strategy


class Fixed(Strategy):
    """Factorize at a fixed rank before step 0 and train low-rank throughout.

    Args:
        rank: anything ``convert.factorize`` accepts (int, float ratio of full rank,
            ``{fqn: int}``, callable, ``"stable"``, ``"scaled_stable"``).
        rank_multiple: round ranks up to this multiple (tensor-core friendly).
        skip_unprofitable: keep layers dense where a rank-r layer would not be cheaper.
    """

    name = "fixed"

    def __init__(
        self, rank: Any = 0.25, rank_multiple: int = 8, skip_unprofitable: bool = True
    ) -> None:
        super().__init__()
        self.rank = rank
        self.rank_multiple = check_int(rank_multiple, "rank_multiple", owner="Fixed")
        self.skip_unprofitable = skip_unprofitable

    def setup(self, ctx: StrategyContext) -> None:
        convert.factorize(
            ctx.model,
            self.rank,
            ctx.filter_fn,
            rank_multiple=self.rank_multiple,
            skip_unprofitable=self.skip_unprofitable,
        )
        self.switch_step = 0
        self.record_ranks(0, self.ranks(ctx.model), "factorize")
