"""``cuttlefish``: full-rank warm-up, then a switch to the scaled stable ranks."""

from __future__ import annotations

from typing import Any

import torch

from ... import convert, rank
from ...ops import check_int
from ..context import StrategyContext
from ..schedule import rewarm
from .base import Strategy


class Cuttlefish(Strategy):
    """Full-rank warm-up, then a switch to low rank once every layer's stable rank settled.

    Every ``track_every`` steps (default: one epoch) the stable ranks of all candidate
    layers are measured (batched SVD on the device, ``rank.StableRankTracker``). The
    switch happens at the first measurement, at or after ``min_switch_step``, where every
    layer's history has converged (``rank.all_converged(span, window, tol)``), or at
    ``max_switch_step`` at the latest. At the switch each layer is factorized by truncated
    SVD at its scaled stable rank ``ceil(srank(W_t)·ξ)`` rounded up to ``rank_multiple``;
    with ``profile=True`` ``factorize`` times each layer at the real input shape and keeps
    the ones that would not get faster dense. Then the LR re-warms over ``rewarm_steps``.

    Args:
        track_every: steps between stable-rank measurements (None: one epoch, or
            ``total_steps // 40`` when that is shorter).
        span, window, tol: convergence detector (Cuttlefish's defaults: 15, 11, 0.1).
        min_switch_step: never switch before this step.
        max_switch_step: switch here at the latest (None: half the run).
        rank_multiple: rank rounding.
        rewarm_steps: LR re-warm-up after the switch (None: the run's ``warmup_steps``).
        profile: time every layer (forward + backward, dense vs low-rank) on a real batch
            at the switch and keep the ones below ``min_speedup`` dense.
        min_speedup: required measured speedup of a layer when ``profile`` is on.
        profile_repeats: timed repetitions per layer and variant (the median is used).
    """

    name = "cuttlefish"

    def __init__(
        self,
        track_every: int | None = None,
        span: int = 15,
        window: int = 11,
        tol: float = 0.1,
        min_switch_step: int = 0,
        max_switch_step: int | None = None,
        rank_multiple: int = 8,
        rewarm_steps: int | None = None,
        profile: bool = True,
        min_speedup: float = 1.0,
        profile_repeats: int = 10,
    ) -> None:
        super().__init__()
        if track_every is not None:
            check_int(track_every, "track_every", owner="Cuttlefish")
        if max_switch_step is not None:
            check_int(max_switch_step, "max_switch_step", owner="Cuttlefish")
        self.track_every = track_every
        self.detector = {"span": span, "window": window, "tol": tol}
        rank.ConvergenceDetector(**self.detector)  # validates the arguments now
        self.min_switch_step = check_int(
            min_switch_step, "min_switch_step", minimum=0, owner="Cuttlefish"
        )
        self.max_switch_step = max_switch_step
        self.rank_multiple = check_int(rank_multiple, "rank_multiple", owner="Cuttlefish")
        self.rewarm_steps = rewarm_steps
        self.profile = profile
        self.min_speedup = min_speedup
        self.profile_repeats = check_int(profile_repeats, "profile_repeats", owner="Cuttlefish")
        self.tracker: rank.StableRankTracker | None = None
        self.switch_ranks: dict[str, int] = {}
        self.scaled_ranks: dict[str, int] = {}
        self.measured_at: list[int] = []
        self.switch_reason: str | None = None

    def setup(self, ctx: StrategyContext) -> None:
        if self.track_every is None:
            # Once per epoch as in the paper, but at least ~40 times per run: the detector
            # needs span + 1 measurements before the fallback at half the run.
            self.track_every = max(1, min(ctx.steps_per_epoch, ctx.total_steps // 40))
        if self.max_switch_step is None:
            self.max_switch_step = max(1, ctx.total_steps // 2)
        if self.rewarm_steps is None:
            self.rewarm_steps = ctx.warmup_steps
        self.tracker = rank.StableRankTracker(ctx.model, ctx.filter_fn)

    def lr_factor(self, step: int, ctx: StrategyContext) -> float:
        return super().lr_factor(step, ctx) * rewarm(step, self.switch_step, self.rewarm_steps or 0)

    def after_step(self, ctx: StrategyContext, done: int) -> bool:
        if self.switch_step is not None:
            return False
        converged = False
        if done % self.track_every == 0:
            # Rank 0 measures and decides; the others take its measurement, so every
            # process holds the same history and switches at the same step.
            latest = self.tracker.update() if ctx.is_main_process() else None
            latest = ctx.broadcast_object(latest)
            if not ctx.is_main_process():
                for f, s in latest.items():
                    self.tracker.history[f].append(s)
            self.measured_at.append(done)
            converged = self.tracker.converged(**self.detector)
        if converged and done >= self.min_switch_step:
            reason = "stable ranks converged"
        elif done >= self.max_switch_step:
            reason = "max_switch_step reached"
        else:
            reason = None
        if done % self.track_every == 0 or done >= self.max_switch_step:
            # The verdict is rank 0's too (a collective only on steps where one is possible).
            reason = ctx.broadcast_object(reason)
        if reason is None:
            return False
        self.switch_reason = reason
        self._switch(ctx, done)
        self.record_ranks(done, self.ranks(ctx.model), "switch")
        return True

    def _switch(self, ctx: StrategyContext, done: int) -> None:
        self.switch_step = done
        if not ctx.is_main_process():
            # Rank 0 chose the ranks and the profiler's verdicts (timings differ between
            # processes); here only its decision is applied. The factor values are then
            # overwritten with rank 0's when the host syncs the weights after the switch.
            self.scaled_ranks, self.switch_ranks = ctx.broadcast_object(None)
            if self.switch_ranks:
                convert.factorize(
                    ctx.model,
                    dict(self.switch_ranks),
                    ctx.filter_fn,
                    rank_multiple=1,
                    skip_unprofitable=False,
                )
            return
        self.scaled_ranks = self.tracker.scaled_ranks(self.rank_multiple)
        example = ctx.example_input() if self.profile else None
        self.switch_ranks = convert.factorize(
            ctx.model,
            self.scaled_ranks,
            ctx.filter_fn,
            rank_multiple=self.rank_multiple,
            skip_unprofitable=True,
            example_input=example,
            min_speedup=self.min_speedup if self.profile else None,
            profile_backward=True,
            profile_repeats=self.profile_repeats,
        )
        ctx.broadcast_object((self.scaled_ranks, self.switch_ranks))

    def report(self) -> dict[str, Any]:
        history = self.tracker.history if self.tracker is not None else {}
        return {
            "switch_reason": self.switch_reason,
            "scaled_stable_ranks": dict(self.scaled_ranks),
            "stable_rank_history": {f: [round(v, 3) for v in h] for f, h in history.items()},
            "stable_rank_measured_at": list(self.measured_at),
        }

    def state_dict(self) -> dict[str, Any]:
        tracker = self.tracker
        return {
            **super().state_dict(),
            "track_every": self.track_every,
            "max_switch_step": self.max_switch_step,
            "rewarm_steps": self.rewarm_steps,
            "switch_ranks": dict(self.switch_ranks),
            "scaled_ranks": dict(self.scaled_ranks),
            "measured_at": list(self.measured_at),
            "switch_reason": self.switch_reason,
            "tracker": None
            if tracker is None
            else {"history": tracker.history, "xi": tracker.xi, "initial": tracker.initial},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.track_every = state["track_every"]
        self.max_switch_step = state["max_switch_step"]
        self.rewarm_steps = state["rewarm_steps"]
        self.switch_ranks = dict(state["switch_ranks"])
        self.scaled_ranks = dict(state["scaled_ranks"])
        self.measured_at = list(state["measured_at"])
        self.switch_reason = state["switch_reason"]
        self._tracker_state = state["tracker"]

    def restore_model(self, ctx: StrategyContext, model_state: dict[str, torch.Tensor]) -> None:
        super().restore_model(ctx, model_state)
        saved = getattr(self, "_tracker_state", None)
        if saved is not None:
            # ξ comes from the *initial* weights, so it is restored, not recomputed.
            self.tracker = rank.StableRankTracker(ctx.model, ctx.filter_fn)
            self.tracker.history = {f: list(h) for f, h in saved["history"].items()}
            self.tracker.xi = dict(saved["xi"])
            self.tracker.initial = dict(saved["initial"])
