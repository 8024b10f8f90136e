"""LoRALinear: forward vs a float64 reference, merge-and-reinit, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.nn import LoRALinear
from lowrank_kernels.testing import rel_error


def _forward64(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """``x·Wᵀ + b + s·x·A·B`` in float64 (docs/design.md, ReLoRA)."""
    x64 = x.detach().double()
    y = x64 @ layer.weight.detach().double().t()
    if layer.bias is not None:
        y = y + layer.bias.detach().double()
    return y + layer.scale * (x64 @ layer.A.detach().double()) @ layer.B.detach().double()


def _with_random_b(layer: LoRALinear) -> LoRALinear:
    with torch.no_grad():
        layer.B.normal_(0, 0.1)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24)])
def test_forward_matches_float64_reference(bias, shape):
    layer = _with_random_b(LoRALinear(24, 40, 6, bias=bias, scale=0.5))
    x = torch.randn(*shape)
    y = layer(x)
    assert y.shape == (*shape[:-1], 40)
    assert rel_error(y, _forward64(layer, x)) < 1e-5


def test_public_exports():
    assert lrk.LoRALinear is LoRALinear


def test_from_linear_reproduces_the_linear_and_freezes_w():
    linear = nn.Linear(32, 48)
    layer = LoRALinear.from_linear(linear, 8, scale=2.0)
    x = torch.randn(7, 32)
    assert rel_error(layer(x), linear(x)) < 1e-6
    assert not layer.weight.requires_grad
    assert layer.A.requires_grad and layer.B.requires_grad and layer.bias.requires_grad
    assert layer.weight.data_ptr() != linear.weight.data_ptr()  # a copy, not an alias
    assert (layer.A.shape, layer.B.shape, layer.scale) == ((32, 8), (8, 48), 2.0)


def test_init_a_is_kaiming_with_fan_in_k_and_b_is_zero():
    K = 400
    layer = LoRALinear(K, 64, 16)
    bound = 1.0 / math.sqrt(K)  # kaiming_uniform(a=√5) with fan-in K, as nn.Linear
    assert layer.A.abs().max() <= bound
    # uniform(-b, b) has std b/√3; 6400 samples pin it to a few percent
    assert abs(layer.A.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    assert torch.count_nonzero(layer.B) == 0


@pytest.mark.parametrize("bias", [True, False])
def test_merge_and_reinit_keeps_the_output(bias):
    layer = _with_random_b(LoRALinear(48, 32, 8, bias=bias, scale=0.75))
    x = torch.randn(10, 48)
    before = _forward64(layer, x)
    expected_w = (
        layer.weight.detach().double()
        + 0.75 * (layer.A.detach().double() @ layer.B.detach().double()).t()
    )
    old_a = layer.A.detach().clone()
    layer.merge_and_reinit()
    assert rel_error(layer(x), before) < 1e-5
    assert rel_error(layer.weight, expected_w) < 1e-6
    assert torch.count_nonzero(layer.B) == 0
    assert torch.count_nonzero(layer.A) == layer.A.numel()
    assert not torch.equal(layer.A, old_a)  # re-drawn


def test_to_linear_has_the_same_function():
    layer = _with_random_b(LoRALinear(20, 12, 4, scale=1.5))
    x = torch.randn(6, 20)
    linear = layer.to_linear()
    assert isinstance(linear, nn.Linear)
    assert rel_error(linear(x), _forward64(layer, x)) < 1e-5


def _grads_nonzero(layer: LoRALinear, steps: int) -> tuple[bool, bool]:
    """Train ``steps`` Adam steps; whether A's and B's gradients were ever non-zero."""
    opt = torch.optim.Adam([layer.A, layer.B], lr=1e-2)
    x, target = torch.randn(16, layer.in_features), torch.randn(16, layer.out_features)
    a_seen = b_seen = False
    for _ in range(steps):
        opt.zero_grad()
        (layer(x) - target).pow(2).mean().backward()
        a_seen |= bool(layer.A.grad.abs().max() > 0)
        b_seen |= bool(layer.B.grad.abs().max() > 0)
        opt.step()
    return a_seen, b_seen


def test_both_factors_get_gradients_within_two_steps_after_wrap_and_reset():
    layer = LoRALinear.from_linear(nn.Linear(16, 12), 4)
    assert _grads_nonzero(layer, 2) == (True, True)
    layer.merge_and_reinit()
    assert _grads_nonzero(layer, 2) == (True, True)
    # and B alone gets one on the very first step (A's needs B != 0)
    layer.merge_and_reinit()
    assert _grads_nonzero(layer, 1) == (False, True)


def test_lowrank_path_goes_through_the_op(monkeypatch):
    import lowrank_kernels.nn.lora as lora_mod

    calls = []
    real = lora_mod.lowrank_linear
    monkeypatch.setattr(
        lora_mod, "lowrank_linear", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    LoRALinear(8, 8, 2)(torch.randn(3, 8))
    assert calls == [1]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(8, 8, 0)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(8, 4, 5)
    with pytest.raises(ValueError, match="in_features"):
        LoRALinear(0, 4, 1)
    with pytest.raises(ValueError, match="scale"):
        LoRALinear(8, 8, 2, scale=-1.0)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoRALinear.from_linear(nn.Conv2d(3, 3, 1), 2)
