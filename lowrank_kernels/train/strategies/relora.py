"""``relora``: high-rank training through low-rank updates (merge-and-restart)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import convert
from ...nn import LoRALinear
from ...ops import check_int
from ..context import StrategyContext
from ..schedule import jagged_cosine
from .base import Strategy


def magnitude_prune_(tensor: torch.Tensor, ratio: float) -> int:
    """Zero the ``floor(ratio·n)`` smallest-magnitude entries of ``tensor`` in place.

    Exactly that many entries are selected (ties broken by position), so the pruned
    fraction does not drift when many entries share a magnitude. Returns the count.
    """
    flat = tensor.view(-1)
    count = int(ratio * flat.numel())
    if count > 0:
        idx = flat.abs().argsort()[:count]
        flat[idx] = 0
    return count


class ReLoRA(Strategy):
    """High-rank training through low-rank updates (merge-and-restart).

    Every candidate ``nn.Linear`` becomes a :class:`~lowrank_kernels.nn.LoRALinear`
    (frozen W, trainable ``A``, ``B``; biases, norms and embeddings stay trainable).
    Every ``cycle`` steps: ``W += s·A·B``, ``A`` re-drawn, ``B`` zeroed, and the Adam
    moments of ``A``/``B`` magnitude-pruned (``prune_ratio`` of the smallest entries
    zeroed, per tensor) so the optimizer forgets most of the old subspace; the LR follows
    a jagged cosine with a ``restart_warmup``-step re-warm-up after each restart.

    Args:
        rank: LoRA rank r.
        scale: s.
        cycle: steps between merges.
        restart_warmup: LR re-warm-up steps after each restart.
        prune_ratio: fraction of each LoRA moment tensor zeroed at a restart.
        warm_start_steps: full-rank steps before wrapping (0: wrap at step 0).
    """

    name = "relora"

    def __init__(
        self,
        rank: int = 32,
        scale: float = 1.0,
        cycle: int = 100,
        restart_warmup: int = 10,
        prune_ratio: float = 0.9,
        warm_start_steps: int = 0,
    ) -> None:
        super().__init__()
        self.rank = check_int(rank, "rank", owner="ReLoRA")
        self.scale = scale
        self.cycle = check_int(cycle, "cycle", owner="ReLoRA")
        self.restart_warmup = check_int(restart_warmup, "restart_warmup", minimum=0, owner="ReLoRA")
        if not isinstance(prune_ratio, (int, float)) or not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"ReLoRA: prune_ratio must be in [0, 1), got {prune_ratio!r}")
        self.prune_ratio = float(prune_ratio)
        self.warm_start_steps = check_int(
            warm_start_steps, "warm_start_steps", minimum=0, owner="ReLoRA"
        )
        self.restarts: list[int] = []
        self.pruned_fraction: float | None = None

    def _wrap(self, ctx: StrategyContext) -> None:
        model = ctx.model
        for fqn, module in convert.candidate_layers(model, ctx.filter_fn).items():
            if isinstance(module, nn.Linear):
                r = min(self.rank, module.in_features, module.out_features)
                model.set_submodule(fqn, LoRALinear.from_linear(module, r, scale=self.scale))

    def setup(self, ctx: StrategyContext) -> None:
        if self.warm_start_steps == 0:
            self._wrap(ctx)
            self.switch_step = 0
            self.record_ranks(0, self.ranks(ctx.model), "wrap")

    def lr_factor(self, step: int, ctx: StrategyContext) -> float:
        start = self.switch_step if self.switch_step is not None else self.warm_start_steps
        return jagged_cosine(
            step,
            ctx.total_steps,
            ctx.warmup_steps,
            ctx.min_lr_ratio,
            start=start,
            cycle=self.cycle,
            restart_warmup=self.restart_warmup,
        )

    def after_step(self, ctx: StrategyContext, done: int) -> bool:
        if self.switch_step is None:
            if done >= self.warm_start_steps:
                self._wrap(ctx)
                self.switch_step = done
                self.record_ranks(done, self.ranks(ctx.model), "wrap")
                return True
            return False
        if done > self.switch_step and (done - self.switch_step) % self.cycle == 0:
            self.restart(ctx)
            self.restarts.append(done)
            self.record_ranks(done, self.ranks(ctx.model), "restart")
        return False

    @torch.no_grad()
    def restart(self, ctx: StrategyContext) -> float:
        """Merge and re-init every LoRA layer and prune their Adam moments.

        Returns the fraction of the LoRA moment entries that are zero afterwards.
        """
        zeros = total = 0
        for module in ctx.model.modules():
            if not isinstance(module, LoRALinear):
                continue
            module.merge_and_reinit()
            # A is re-drawn from each process's RNG: use the main process's draw everywhere.
            ctx.broadcast_tensor_(module.A.data)
            for p in (module.A, module.B):
                state = ctx.optimizer.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        magnitude_prune_(state[key], self.prune_ratio)
                        zeros += int((state[key] == 0).sum())
                        total += state[key].numel()
        self.pruned_fraction = zeros / total if total else 0.0
        return self.pruned_fraction

    def ranks(self, model: nn.Module) -> dict[str, int]:
        return {f: m.rank for f, m in model.named_modules() if isinstance(m, LoRALinear)}

    def decay_factors(self, model: nn.Module, step_size: float) -> None:
        """No-op: LoRA factors get AdamW's decoupled decay, as in the ReLoRA reference."""

    def report(self) -> dict[str, Any]:
        return {"restarts": list(self.restarts), "pruned_fraction": self.pruned_fraction}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "restarts": list(self.restarts),
            "pruned_fraction": self.pruned_fraction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.restarts = list(state["restarts"])
        self.pruned_fraction = state["pruned_fraction"]

    def restore_model(self, ctx: StrategyContext, model_state: dict[str, torch.Tensor]) -> None:
        if self.switch_step is not None:
            self._wrap(ctx)
        ctx.model.load_state_dict(model_state)
