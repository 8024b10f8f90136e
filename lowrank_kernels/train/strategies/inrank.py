"""``inrank``: incremental low-rank learning (start small, grow each rank, then freeze)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import convert, rank
from ...ops import check_int
from ..context import StrategyContext
from .base import Strategy
from .factors import lowrank_modules


class InRank(Strategy):
    """Incremental low-rank learning: start small, let each layer's rank grow, then freeze.

    Every candidate layer is replaced by a freshly initialised low-rank layer (the
    layer's default init) of rank ``init_rank + buffer`` before step 0. Every
    ``gap`` steps after ``warmup`` the ``rank + buffer`` singular values s of each
    layer's product ``V·U`` are computed (:meth:`spectra`) and the layer's rank becomes
    ``max(rank, k)`` with k the smallest rank whose explained ratio
    ``1 − Var(s − s_k)/Var(s)`` exceeds ``threshold``; the layer
    keeps ``buffer`` spare directions (capacity ``rank + buffer``) so growth stays
    visible in the spectrum. The rank never decreases. At ``growth_steps`` every layer
    is SVD-truncated to its rank and training continues at that fixed rank.

    Args:
        init_rank: starting rank.
        buffer: spare directions on top of the rank during growth.
        gap: steps between rank updates.
        warmup: steps before the first update (None: the run's ``warmup_steps``).
        threshold: explained-ratio threshold (InRank: 0.9).
        growth_steps: end of the growth stage (None: half the run).
    """

    name = "inrank"

    def __init__(
        self,
        init_rank: int = 4,
        buffer: int = 4,
        gap: int = 20,
        warmup: int | None = None,
        threshold: float = 0.9,
        growth_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.init_rank = check_int(init_rank, "init_rank", owner="InRank")
        self.buffer = check_int(buffer, "buffer", owner="InRank")
        self.gap = check_int(gap, "gap", owner="InRank")
        self.warmup = warmup
        if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"InRank: threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.growth_steps = growth_steps
        self.current: dict[str, int] = {}

    def setup(self, ctx: StrategyContext) -> None:
        if self.warmup is None:
            self.warmup = ctx.warmup_steps
        if self.growth_steps is None:
            self.growth_steps = max(1, ctx.total_steps // 2)
        capacity = {
            fqn: min(self.init_rank + self.buffer, rank.full_rank(m))
            for fqn, m in convert.candidate_layers(ctx.model, ctx.filter_fn).items()
        }
        convert.factorize(
            ctx.model,
            capacity,
            ctx.filter_fn,
            rank_multiple=1,
            skip_unprofitable=False,
        )
        # Re-draw the factors from the low-rank layers' default init, whose product has
        # the dense default's per-entry variance: a truncated SVD of a random init at
        # rank r keeps only about √(r/min(K, N)) of its norm and starves the signal.
        for module in lowrank_modules(ctx.model).values():
            module.reset_parameters()
        self.current = {
            f: min(self.init_rank, m.rank) for f, m in lowrank_modules(ctx.model).items()
        }
        self.record_ranks(0, self.current, "factorize")

    def spectra(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The ``rank + buffer`` singular values of every tracked layer's product ``V·U``.

        One batched SVD per weight shape, on the device. Only the first ``module.rank``
        values are kept: the product has at most that many non-zero ones, and the
        ``min(K, N) − rank`` structural zeros would swamp ``Var(s)`` in the explained ratio.
        """
        modules = lowrank_modules(model)
        groups: dict[tuple, list[str]] = {}
        mats = {f: rank.module_weight_matrix(modules[f]) for f in self.current}
        for f, m in mats.items():
            groups.setdefault((tuple(m.shape), m.device), []).append(f)
        out = {}
        for fqns in groups.values():
            s = torch.linalg.svdvals(torch.stack([mats[f] for f in fqns]).float()).cpu()
            out.update((f, s_f[: modules[f].rank]) for f, s_f in zip(fqns, s, strict=True))
        return out

    def after_step(self, ctx: StrategyContext, done: int) -> bool:
        if self.switch_step is not None:
            return False
        model = ctx.model
        modules = lowrank_modules(model)
        if done >= self.growth_steps:
            for fqn, r in self.current.items():
                if modules[fqn].rank > r:
                    model.set_submodule(fqn, modules[fqn].with_rank(r))
            self.switch_step = done
            self.record_ranks(done, self.current, "freeze")
            return True
        if done < self.warmup or (done - self.warmup) % self.gap:
            return False
        changed = grown = False
        # Rank 0 computes the spectra and the new ranks; every process applies them.
        picked = None
        if ctx.is_main_process():
            picked = {
                fqn: rank.explained_ratio_rank(s, self.threshold)
                for fqn, s in self.spectra(model).items()
            }
        picked = ctx.broadcast_object(picked)
        for fqn, k in picked.items():
            module = modules[fqn]
            full = rank.full_rank(module)
            if k <= self.current[fqn]:
                continue
            self.current[fqn] = k
            grown = True
            capacity = min(k + self.buffer, full)
            if capacity > module.rank:
                model.set_submodule(fqn, module.with_rank(capacity))
                changed = True
        if grown:
            self.record_ranks(done, self.current, "grow")
        return changed

    def ranks(self, model: nn.Module) -> dict[str, int]:
        return dict(self.current)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "warmup": self.warmup,
            "growth_steps": self.growth_steps,
            "current": dict(self.current),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.warmup = state["warmup"]
        self.growth_steps = state["growth_steps"]
        self.current = dict(state["current"])
