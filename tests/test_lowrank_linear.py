"""LowRankLinear: init, SVD conversion round trips, state_dict, deepcopy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.testing import linear_reference64, rel_error


def test_forward_is_x_V_U_plus_bias():
    m = lrk.LowRankLinear(12, 7, 3)
    x = torch.randn(2, 4, 12)
    assert m(x).shape == (2, 4, 7)
    assert rel_error(m(x), linear_reference64(x, m.V, m.U, m.bias)) < 1e-6
    assert m.V.shape == (12, 3) and m.U.shape == (3, 7) and m.bias.shape == (7,)
    assert lrk.LowRankLinear(12, 7, 3, bias=False).bias is None


def test_default_init_matches_nn_linear_output_variance():
    K, N, r = 256, 256, 32
    x = torch.randn(4096, K)
    torch.manual_seed(1)
    low = torch.stack(
        [
            (
                x
                @ lrk.LowRankLinear(K, N, r, bias=False).V
                @ lrk.LowRankLinear(K, N, r, bias=False).U
            ).var()
            for _ in range(8)
        ]
    )
    dense = torch.stack([nn.Linear(K, N, bias=False)(x).var() for _ in range(8)])
    # nn.Linear's default weight has variance 1/(3K), so the output variance is 1/3.
    assert abs(dense.mean().item() - 1 / 3) < 0.02
    assert abs(low.mean().item() - dense.mean().item()) < 0.03


@pytest.mark.parametrize("K,N", [(24, 16), (16, 24)])
def test_from_linear_full_rank_reproduces_output(K, N):
    linear = nn.Linear(K, N)
    m = lrk.LowRankLinear.from_linear(linear, min(K, N))
    x = torch.randn(10, K)
    assert rel_error(m(x), linear(x).double()) < 1e-5


def test_from_linear_low_rank_error_is_the_svd_tail():
    linear = nn.Linear(20, 30)
    r = 6
    m = lrk.LowRankLinear.from_linear(linear, r)
    W = linear.weight.detach().double()
    s = torch.linalg.svdvals(W)
    tail = s[r:].pow(2).sum().sqrt().item()
    err = (W - (m.V.detach().double() @ m.U.detach().double()).t()).norm().item()
    assert abs(err - tail) / tail < 1e-4
    # the √S split balances the factors: both carry the same singular values
    torch.testing.assert_close(
        torch.linalg.svdvals(m.V.detach().double()), s[:r].sqrt(), rtol=1e-4, atol=1e-6
    )


def test_from_linear_keeps_dtype_device_and_bias():
    linear = nn.Linear(8, 6, dtype=torch.float64)
    m = lrk.LowRankLinear.from_linear(linear, 3)
    assert m.V.dtype == torch.float64 and m.V.device == linear.weight.device
    torch.testing.assert_close(m.bias, linear.bias)
    no_bias = lrk.LowRankLinear.from_linear(nn.Linear(8, 6, bias=False), 2)
    assert no_bias.bias is None


def test_to_linear_round_trip():
    m = lrk.LowRankLinear(9, 11, 4)
    dense = m.to_linear()
    x = torch.randn(5, 9)
    assert isinstance(dense, nn.Linear)
    assert rel_error(dense(x), linear_reference64(x, m.V, m.U, m.bias)) < 1e-6
    back = lrk.LowRankLinear.from_linear(dense, 4)
    assert rel_error(back(x), linear_reference64(x, m.V, m.U, m.bias)) < 1e-5


def test_state_dict_round_trip_and_deepcopy():
    m = lrk.LowRankLinear(9, 11, 4)
    fresh = lrk.LowRankLinear(9, 11, 4)
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(3, 9)
    assert torch.equal(fresh(x), m(x))
    assert set(m.state_dict()) == {"V", "U", "bias"}
    clone = copy.deepcopy(m)
    assert torch.equal(clone(x), m(x))
    assert clone.V.data_ptr() != m.V.data_ptr()


def test_extra_repr():
    assert "rank=4" in repr(lrk.LowRankLinear(9, 11, 4))


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "cpu_autocast"])
def test_meta_device_forward_and_backward_behave_like_nn_linear(autocast):
    """Shape inference on the meta device (no memory), also inside a CPU autocast region
    (which, as for nn.Linear, does not touch meta tensors)."""
    with torch.device("meta"):
        layer = lrk.LowRankLinear(16, 8, 4)
        conv = lrk.LowRankConv2d(3, 8, 3, 2, padding=1)
        dense = nn.Linear(16, 8)
    x = torch.empty(5, 2, 16, device="meta", requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, y_dense = layer(x), dense(x)
        image = conv(torch.empty(1, 3, 6, 6, device="meta"))
    assert y.is_meta and y.shape == y_dense.shape == (5, 2, 8) and y.dtype == y_dense.dtype
    assert image.is_meta and image.shape == (1, 8, 6, 6)
    y.sum().backward()
    assert x.grad.is_meta and x.grad.shape == x.shape
    assert layer.V.grad.shape == layer.V.shape and layer.U.grad.shape == layer.U.shape


def test_weight_is_the_differentiable_dense_equivalent_and_read_only():
    torch.manual_seed(0)
    layer = lrk.LowRankLinear(6, 5, 2, dtype=torch.float64)
    V, U = layer.V.detach().clone(), layer.U.detach().clone()
    weight = layer.weight
    assert weight.shape == (5, 6) and weight.dtype == torch.float64
    torch.testing.assert_close(weight, (V @ U).T)
    # code written for nn.Linear that computes with .weight gets the layer's gradients
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.nn.functional.linear(x, layer.weight, layer.bias).square().sum().backward()
    grads = (layer.V.grad.clone(), layer.U.grad.clone())
    layer.zero_grad()
    layer(x).square().sum().backward()
    torch.testing.assert_close(grads, (layer.V.grad, layer.U.grad))
    for value in (torch.zeros(5, 6), nn.Parameter(torch.zeros(5, 6))):
        with pytest.raises(AttributeError, match="read-only; set V and U"):
            layer.weight = value
    assert "weight" not in dict(layer.named_parameters())  # not a parameter, not saved
