"""Helpers the strategies share: finding low-rank layers and their factors, the
Frobenius penalty/decay of the factors, and the default AdamW parameter groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...layers import LOWRANK_TYPES
from ...nn import LowRankLinear


def lowrank_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: module}`` of every ``LowRankLinear`` / ``LowRankConv2d`` in ``model``."""
    return {f: m for f, m in model.named_modules() if isinstance(m, LOWRANK_TYPES)}


def factor_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The factor weights (``V``, ``U``; ``conv_v.weight``, ``conv_u.weight``), not biases."""
    params: set[nn.Parameter] = set()
    for module in lowrank_modules(model).values():
        params.update(module.factors())
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
