"""Training strategies: ``full``, ``fixed``, ``cuttlefish``, ``relora`` and ``inrank``.

A strategy owns the model's *structure* over a run (which layers are low-rank, at what
rank, when that changes) and the learning-rate shape; the :class:`~.trainer.Trainer`
owns the loop. Hooks, in the order the trainer calls them:

* ``setup(trainer)`` once before the first step (not on resume);
* per step: ``lr_factor(step, trainer)``; after the optimizer step
  ``decay_factors(model, lr·weight_decay)`` (decoupled Frobenius decay of the factors)
  and ``after_step(trainer, done)`` with ``done`` the number of completed steps;
  it returns True when it replaced parameters, and the trainer then rebuilds the
  optimizer (keeping the state of every parameter that survived);
* ``state_dict()`` / ``load_state_dict(state)`` and ``restore_model(trainer, model_state)``
  for checkpoints: the latter rebuilds the saved structure and loads the weights strictly.

Under ``torchrun`` every decision (convergence, ranks, profiler verdicts, growth) is made on
rank 0 and broadcast (:mod:`lowrank_kernels.distributed`), so every process changes the
structure at the same step in the same way; the trainer then copies rank 0's weights to
the other processes and re-wraps the model.

Layers are changed only through the public API (``convert.factorize`` / ``restore``,
``LowRankLinear``, ``LowRankConv2d``, ``LoRALinear``), so GPUs get the fused kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import convert, rank
from .. import distributed as dist_utils
from ..nn import LoRALinear, LowRankConv2d, LowRankLinear
from ..ops import check_int
from .schedule import jagged_cosine, rewarm, warmup_cosine

if TYPE_CHECKING:
    from .trainer import Trainer

LOWRANK_TYPES = (LowRankLinear, LowRankConv2d)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the strategies


def lowrank_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: module}`` of every ``LowRankLinear`` / ``LowRankConv2d`` in ``model``."""
    return {f: m for f, m in model.named_modules() if isinstance(m, LOWRANK_TYPES)}


def factor_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The factor weights (``V``, ``U``; ``conv_v.weight``, ``conv_u.weight``), not biases."""
    params: set[nn.Parameter] = set()
    for module in lowrank_modules(model).values():
        if isinstance(module, LowRankLinear):
            params.update((module.V, module.U))
        else:
            params.update((module.conv_v.weight, module.conv_u.weight))
    return params


def _factor_grams(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(VᵀV, U·Uᵀ)``, both ``[r, r]`` in fp32, for the layer's product ``V·U`` [K, N]."""
    if isinstance(module, LowRankLinear):
        V, U = module.V.float(), module.U.float()
        return V.t() @ V, U @ U.t()
    v = module.conv_v.weight.flatten(1).float()  # [r, C_in·kh·kw] = Vᵀ
    u = module.conv_u.weight.flatten(1).float()  # [C_out, r] = Uᵀ
    return v @ v.t(), u.t() @ u


def frobenius_penalty(model: nn.Module) -> torch.Tensor | None:
    """``½·Σ ‖V·U‖_F²`` over the low-rank layers (None without any), fp32, differentiable.

    Uses ``‖V·U‖_F² = Σ_ij (VᵀV)_ij (U·Uᵀ)_ij`` (both Gram matrices are symmetric), so it
    costs ``O(r²·(K+N))`` instead of forming the ``[K, N]`` product.
    """
    total = None
    for module in lowrank_modules(model).values():
        vtv, uut = _factor_grams(module)
        term = 0.5 * (vtv * uut).sum()
        total = term if total is None else total + term
    return total


@torch.no_grad()
def frobenius_decay_(model: nn.Module, step_size: float) -> None:
    """Decoupled Frobenius decay: one gradient step of ``step_size·½‖V·U‖_F²`` on the factors.

    ``V ← V − η·V·(U·Uᵀ)`` and ``U ← U − η·(VᵀV)·U`` (both from the old factors), with
    ``η = lr·λ``. Cuttlefish/Pufferfish decay the *product* the way L2 decays a dense
    weight (L2 on each factor would instead penalise the arbitrary balance between V and
    U). It is applied after the optimizer step, like AdamW's decoupled decay of the dense
    weights: added to the loss, Adam's normalisation would turn it into full-LR steps
    that dominate the small gradients of a freshly factorized layer and shrink it to zero.
    """
    if step_size == 0:
        return
    for module in lowrank_modules(model).values():
        if isinstance(module, LowRankLinear):
            V, U = module.V, module.U
            vtv, uut = V.t() @ V, U @ U.t()
            V.sub_(step_size * (V @ uut))
            U.sub_(step_size * (vtv @ U))
        else:
            v = module.conv_v.weight  # [r, C_in, kh, kw] = Vᵀ reshaped
            u = module.conv_u.weight  # [C_out, r, 1, 1] = Uᵀ reshaped
            vm, um = v.flatten(1), u.flatten(1)
            vtv, uut = vm @ vm.t(), um.t() @ um
            v.sub_(step_size * (uut @ vm).view_as(v))
            u.sub_(step_size * (um @ vtv).view_as(u))


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups in ``named_parameters`` order (so optimizer state maps back on resume).

    Matrices/embeddings get decoupled weight decay; biases and norms none; low-rank
    factors none either (they get :func:`frobenius_decay_` instead).
    Frozen parameters are left out; empty groups are dropped.
    """
    factors = factor_parameters(model)
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "factors": []}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p in factors:
            groups["factors"].append(p)
        elif p.dim() >= 2:
            groups["decay"].append(p)
        else:
            groups["no_decay"].append(p)
    wd = {"decay": weight_decay, "no_decay": 0.0, "factors": 0.0}
    return [
        {"params": params, "weight_decay": wd[name], "name": name}
        for name, params in groups.items()
        if params
    ]


# ---------------------------------------------------------------------------------------------
# Base strategy and the two simple ones


class Strategy:
    """Full-rank training (the baseline); the base class of every strategy."""

    name = "full"

    def __init__(self) -> None:
        self.switch_step: int | None = None

    def setup(self, trainer: Trainer) -> None:
        """Prepare the model before step 0 (called once, not on resume)."""

    def lr_factor(self, step: int, trainer: Trainer) -> float:
        """Multiplier of the base LR for optimizer step ``step`` (0-based)."""
        cfg = trainer.config
        return warmup_cosine(step, trainer.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)

    def decay_factors(self, model: nn.Module, step_size: float) -> None:
        """After each optimizer step: decoupled Frobenius decay of the low-rank factors."""
        frobenius_decay_(model, step_size)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups for the current structure."""
        return default_param_groups(model, weight_decay)

    def after_step(self, trainer: Trainer, done: int) -> bool:
        """Called after ``done`` completed steps; True when parameters were replaced."""
        return False

    def ranks(self, model: nn.Module) -> dict[str, int]:
        """Current ``{fqn: rank}`` of the layers this strategy made low-rank."""
        return {f: m.rank for f, m in lowrank_modules(model).items()}

    def report(self) -> dict[str, Any]:
        """Strategy-specific entries for the run report."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The strategy's progress (plain Python values) for a checkpoint."""
        return {"switch_step": self.switch_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; called before :meth:`restore_model`."""
        self.switch_step = state["switch_step"]

    def restore_model(self, trainer: Trainer, model_state: dict[str, torch.Tensor]) -> None:
        """Rebuild the checkpoint's structure on the fresh dense model, then load it strictly."""
        if any(k.endswith((".V", ".conv_v.weight")) for k in model_state):
            convert.restore(trainer.model, model_state)
        else:
            trainer.model.load_state_dict(model_state)


class FullRank(Strategy):
    """Dense training with AdamW and warm-up + cosine LR: the baseline."""

    name = "full"


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

    def setup(self, trainer: Trainer) -> None:
        convert.factorize(
            trainer.model,
            self.rank,
            trainer.task.filter_fn,
            rank_multiple=self.rank_multiple,
            skip_unprofitable=self.skip_unprofitable,
        )
        self.switch_step = 0


# ---------------------------------------------------------------------------------------------
# Cuttlefish


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

    def setup(self, trainer: Trainer) -> None:
        if self.track_every is None:
            # Once per epoch as in the paper, but at least ~40 times per run: the detector
            # needs span + 1 measurements before the fallback at half the run.
            self.track_every = max(1, min(trainer.task.steps_per_epoch, trainer.total_steps // 40))
        if self.max_switch_step is None:
            self.max_switch_step = max(1, trainer.total_steps // 2)
        if self.rewarm_steps is None:
            self.rewarm_steps = trainer.config.warmup_steps
        self.tracker = rank.StableRankTracker(trainer.model, trainer.task.filter_fn)

    def lr_factor(self, step: int, trainer: Trainer) -> float:
        return super().lr_factor(step, trainer) * rewarm(
            step, self.switch_step, self.rewarm_steps or 0
        )

    def after_step(self, trainer: Trainer, done: int) -> bool:
        if self.switch_step is not None:
            return False
        converged = False
        if done % self.track_every == 0:
            # Rank 0 measures and decides; the others take its measurement, so every
            # process holds the same history and switches at the same step.
            latest = self.tracker.update() if dist_utils.is_main_process() else None
            latest = dist_utils.broadcast_object(latest)
            if not dist_utils.is_main_process():
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
            reason = dist_utils.broadcast_object(reason)
        if reason is None:
            return False
        self.switch_reason = reason
        self._switch(trainer, done)
        return True

    def _switch(self, trainer: Trainer, done: int) -> None:
        self.switch_step = done
        if not dist_utils.is_main_process():
            # Rank 0 chose the ranks and the profiler's verdicts (timings differ between
            # processes); here only its decision is applied. The factor values are then
            # overwritten with rank 0's by the trainer's broadcast.
            self.scaled_ranks, self.switch_ranks = dist_utils.broadcast_object(None)
            if self.switch_ranks:
                convert.factorize(
                    trainer.model,
                    dict(self.switch_ranks),
                    trainer.task.filter_fn,
                    rank_multiple=1,
                    skip_unprofitable=False,
                )
            return
        self.scaled_ranks = self.tracker.scaled_ranks(self.rank_multiple)
        example = trainer.task.example_input(trainer.device) if self.profile else None
        self.switch_ranks = convert.factorize(
            trainer.model,
            self.scaled_ranks,
            trainer.task.filter_fn,
            rank_multiple=self.rank_multiple,
            skip_unprofitable=True,
            example_input=example,
            min_speedup=self.min_speedup if self.profile else None,
            profile_backward=True,
            profile_repeats=self.profile_repeats,
        )
        dist_utils.broadcast_object((self.scaled_ranks, self.switch_ranks))

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

    def restore_model(self, trainer: Trainer, model_state: dict[str, torch.Tensor]) -> None:
        super().restore_model(trainer, model_state)
        saved = getattr(self, "_tracker_state", None)
        if saved is not None:
            # ξ comes from the *initial* weights, so it is restored, not recomputed.
            self.tracker = rank.StableRankTracker(trainer.model, trainer.task.filter_fn)
            self.tracker.history = {f: list(h) for f, h in saved["history"].items()}
            self.tracker.xi = dict(saved["xi"])
            self.tracker.initial = dict(saved["initial"])


# ---------------------------------------------------------------------------------------------
# ReLoRA


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

    def _wrap(self, trainer: Trainer) -> None:
        model = trainer.model
        for fqn, module in convert.candidate_layers(model, trainer.task.filter_fn).items():
            if isinstance(module, nn.Linear):
                r = min(self.rank, module.in_features, module.out_features)
                model.set_submodule(fqn, LoRALinear.from_linear(module, r, scale=self.scale))

    def setup(self, trainer: Trainer) -> None:
        if self.warm_start_steps == 0:
            self._wrap(trainer)
            self.switch_step = 0

    def lr_factor(self, step: int, trainer: Trainer) -> float:
        cfg = trainer.config
        start = self.switch_step if self.switch_step is not None else self.warm_start_steps
        return jagged_cosine(
            step,
            trainer.total_steps,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
            start=start,
            cycle=self.cycle,
            restart_warmup=self.restart_warmup,
        )

    def after_step(self, trainer: Trainer, done: int) -> bool:
        if self.switch_step is None:
            if done >= self.warm_start_steps:
                self._wrap(trainer)
                self.switch_step = done
                return True
            return False
        if done > self.switch_step and (done - self.switch_step) % self.cycle == 0:
            self.restart(trainer)
            self.restarts.append(done)
        return False

    @torch.no_grad()
    def restart(self, trainer: Trainer) -> float:
        """Merge and re-init every LoRA layer and prune their Adam moments.

        Returns the fraction of the LoRA moment entries that are zero afterwards.
        """
        zeros = total = 0
        for module in trainer.model.modules():
            if not isinstance(module, LoRALinear):
                continue
            module.merge_and_reinit()
            if dist_utils.is_distributed():
                # A is re-drawn from each process's RNG: use rank 0's draw everywhere.
                torch.distributed.broadcast(module.A.data, src=0)
            for p in (module.A, module.B):
                state = trainer.optimizer.state.get(p, {})
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

    def restore_model(self, trainer: Trainer, model_state: dict[str, torch.Tensor]) -> None:
        if self.switch_step is not None:
            self._wrap(trainer)
        trainer.model.load_state_dict(model_state)


# ---------------------------------------------------------------------------------------------
# InRank


@torch.no_grad()
def _grow(module: nn.Module, new_rank: int) -> nn.Module:
    """A copy of a low-rank layer with ``new_rank >= rank``: same function, new directions.

    The new columns of V are drawn from the layer's default init and the new rows of U
    are zero, so the product is unchanged while both get gradients (dU ≠ 0 at once).
    """
    r = module.rank
    if isinstance(module, LowRankLinear):
        new = LowRankLinear(
            module.in_features,
            module.out_features,
            new_rank,
            bias=module.bias is not None,
            device=module.V.device,
            dtype=module.V.dtype,
            recompute_intermediate=module.recompute_intermediate,
        )
        new.V[:, :r] = module.V
        new.U[:r] = module.U
        new.U[r:] = 0
        if module.bias is not None:
            new.bias.copy_(module.bias)
        return new
    weight = module.conv_v.weight
    new = LowRankConv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        new_rank,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.conv_v.weight[:r] = weight
    new.conv_u.weight[:, :r] = module.conv_u.weight
    new.conv_u.weight[:, r:] = 0
    if module.bias is not None:
        new.conv_u.bias.copy_(module.bias)
    return new


def _truncate(module: nn.Module, new_rank: int) -> nn.Module:
    """Best rank-``new_rank`` approximation of a low-rank layer's product (truncated SVD)."""
    if isinstance(module, LowRankLinear):
        return LowRankLinear.from_linear(module.to_linear(), new_rank)
    return LowRankConv2d.from_conv2d(module.to_conv2d(), new_rank)


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
        self.rank_history: list[tuple[int, dict[str, int]]] = []

    def setup(self, trainer: Trainer) -> None:
        if self.warmup is None:
            self.warmup = trainer.config.warmup_steps
        if self.growth_steps is None:
            self.growth_steps = max(1, trainer.total_steps // 2)
        capacity = {
            fqn: min(self.init_rank + self.buffer, rank.full_rank(m))
            for fqn, m in convert.candidate_layers(trainer.model, trainer.task.filter_fn).items()
        }
        convert.factorize(
            trainer.model,
            capacity,
            trainer.task.filter_fn,
            rank_multiple=1,
            skip_unprofitable=False,
        )
        # Re-draw the factors from the low-rank layers' default init, whose product has
        # the dense default's per-entry variance: a truncated SVD of a random init at
        # rank r keeps only about √(r/min(K, N)) of its norm and starves the signal.
        for module in lowrank_modules(trainer.model).values():
            module.reset_parameters()
        self.current = {
            f: min(self.init_rank, m.rank) for f, m in lowrank_modules(trainer.model).items()
        }
        self.rank_history.append((0, dict(self.current)))

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

    def after_step(self, trainer: Trainer, done: int) -> bool:
        if self.switch_step is not None:
            return False
        model = trainer.model
        modules = lowrank_modules(model)
        if done >= self.growth_steps:
            for fqn, r in self.current.items():
                if modules[fqn].rank > r:
                    model.set_submodule(fqn, _truncate(modules[fqn], r))
            self.switch_step = done
            self.rank_history.append((done, dict(self.current)))
            return True
        if done < self.warmup or (done - self.warmup) % self.gap:
            return False
        changed = False
        # Rank 0 computes the spectra and the new ranks; every process applies them.
        picked = None
        if dist_utils.is_main_process():
            picked = {
                fqn: rank.explained_ratio_rank(s, self.threshold)
                for fqn, s in self.spectra(model).items()
            }
        picked = dist_utils.broadcast_object(picked)
        for fqn, k in picked.items():
            module = modules[fqn]
            full = rank.full_rank(module)
            if k <= self.current[fqn]:
                continue
            self.current[fqn] = k
            capacity = min(k + self.buffer, full)
            if capacity > module.rank:
                model.set_submodule(fqn, _grow(module, capacity))
                changed = True
        self.rank_history.append((done, dict(self.current)))
        return changed

    def ranks(self, model: nn.Module) -> dict[str, int]:
        return dict(self.current)

    def report(self) -> dict[str, Any]:
        return {"rank_history": [[step, ranks] for step, ranks in self.rank_history]}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "warmup": self.warmup,
            "growth_steps": self.growth_steps,
            "current": dict(self.current),
            "rank_history": [[step, dict(r)] for step, r in self.rank_history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.warmup = state["warmup"]
        self.growth_steps = state["growth_steps"]
        self.current = dict(state["current"])
        self.rank_history = [(step, dict(r)) for step, r in state["rank_history"]]


STRATEGIES: dict[str, type[Strategy]] = {
    "full": FullRank,
    "fixed": Fixed,
    "cuttlefish": Cuttlefish,
    "relora": ReLoRA,
    "inrank": InRank,
}


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build strategy ``name`` (one of :data:`STRATEGIES`) with its keyword arguments."""
    if name not in STRATEGIES:
        raise ValueError(f"make_strategy: method must be one of {sorted(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as exc:
        raise TypeError(f"make_strategy: bad options for method {name!r}: {exc}") from exc
