"""Layer behaviour owned by the layers: ``weight_matrix``, ``factors``, ``with_rank``,
``from_dense``/``to_dense``, and the one registry of dense → low-rank types."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.layers import LOWRANK_FOR_DENSE, LOWRANK_TYPES, module_weight_matrix


def _linear():
    return lrk.LowRankLinear(12, 9, 4, dtype=torch.float64)


def _conv():
    return lrk.LowRankConv2d(3, 5, 3, 4, padding=1, stride=2, dtype=torch.float64)


def _product64(layer) -> torch.Tensor:
    """The dense weight [out, in·k·k] from the factors, in float64, computed here."""
    if isinstance(layer, lrk.LowRankLinear):
        return (layer.V.detach() @ layer.U.detach()).t()
    v = layer.conv_v.weight.detach().reshape(layer.rank, -1)
    return layer.conv_u.weight.detach().reshape(layer.out_channels, layer.rank) @ v


def _input(layer):
    if isinstance(layer, lrk.LowRankLinear):
        return torch.randn(7, 12, dtype=torch.float64)
    return torch.randn(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_weight_matrix_and_factors(make):
    layer = make()
    torch.testing.assert_close(layer.weight_matrix(), _product64(layer))
    torch.testing.assert_close(module_weight_matrix(layer), _product64(layer))
    first, second = layer.factors()
    assert all(isinstance(p, nn.Parameter) for p in (first, second))
    assert {id(first), id(second)} <= {id(p) for p in layer.parameters()}


@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_growing_keeps_the_function_and_gives_the_new_directions_gradients(make):
    layer = make()
    x = _input(layer)
    grown = layer.with_rank(5)  # the conv's full rank is min(5, 3·3·3) = 5
    assert type(grown) is type(layer) and grown.rank == 5
    assert grown.weight_matrix().dtype == torch.float64
    torch.testing.assert_close(grown(x), layer(x))
    grown(x).square().sum().backward()
    second = grown.factors()[1]
    assert second.grad is not None and second.grad.abs().sum() > 0  # zero rows still learn


@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_shrinking_is_the_best_approximation(make):
    """Eckart–Young: the rank-2 layer's product error equals the tail singular values."""
    layer = make()
    small = layer.with_rank(2)
    s = torch.linalg.svdvals(_product64(layer))
    error = torch.linalg.matrix_norm(small.weight_matrix() - _product64(layer))
    torch.testing.assert_close(error, s[2:].square().sum().sqrt())
    assert small.bias is not None
    torch.testing.assert_close(small.bias, layer.bias)


def test_from_dense_to_dense_and_the_registry():
    dense = nn.Linear(10, 6, dtype=torch.float64)
    assert LOWRANK_FOR_DENSE[nn.Linear] is lrk.LowRankLinear
    assert LOWRANK_FOR_DENSE[nn.Conv2d] is lrk.LowRankConv2d
    assert set(LOWRANK_TYPES) == set(LOWRANK_FOR_DENSE.values())
    full = lrk.LowRankLinear.from_dense(dense, 6)
    torch.testing.assert_close(full.to_dense().weight, dense.weight)
    conv = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    back = lrk.LowRankConv2d.from_dense(conv, 4).to_dense()
    torch.testing.assert_close(back.weight, conv.weight)
    assert (back.padding, back.stride) == (conv.padding, conv.stride)


def test_lora_layer_shares_the_interface():
    dense = nn.Linear(10, 6, dtype=torch.float64)
    lora = lrk.LoRALinear.from_dense(dense, 3)
    with torch.no_grad():
        lora.B.normal_()
    A, B = lora.factors()
    expected = dense.weight.detach() + lora.scale * (A.detach() @ B.detach()).t()
    torch.testing.assert_close(lora.weight_matrix(), expected)
    torch.testing.assert_close(lora.to_dense().weight, expected)


def test_constructor_arguments_that_used_to_pass_silently():
    with pytest.raises(ValueError, match="scale must be a finite float > 0, got nan"):
        lrk.LoRALinear(4, 4, 2, scale=float("nan"))
    for kernel in [(3, 3, 3), (3,)]:
        with pytest.raises(ValueError, match=r"kernel_size must be an int or a \(kh, kw\) pair"):
            lrk.LowRankConv2d(3, 4, kernel, 2)
