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


def _fp32_layers():
    linear = lrk.LowRankLinear(12, 9, 4, recompute_intermediate=True)
    conv = lrk.LowRankConv2d(3, 5, 3, 4, padding=1, stride=2, dilation=1, padding_mode="reflect")
    return linear, conv


@pytest.mark.parametrize("index", [0, 1], ids=["linear", "conv"])
def test_with_rank_at_the_current_rank_reproduces_the_layer(index):
    layer = _fp32_layers()[index]
    x = _input(layer).float()
    same = layer.with_rank(layer.rank)
    assert same is not layer and same.rank == layer.rank
    torch.testing.assert_close(same(x), layer(x))
    for p_same, p_old in zip(same.parameters(), layer.parameters(), strict=True):
        assert p_same.data_ptr() != p_old.data_ptr()  # a copy, not shared storage


@pytest.mark.parametrize("index", [0, 1], ids=["linear", "conv"])
@pytest.mark.parametrize("rank", [2, 5])
def test_with_rank_keeps_dtype_device_bias_options_trainability_and_mode(index, rank):
    layer = _fp32_layers()[index]
    layer.eval()
    first = layer.factors()[0]
    first.requires_grad_(False)
    new = layer.with_rank(rank)
    assert type(new) is type(layer) and new.rank == rank
    assert all(p.dtype == torch.float32 and p.device == first.device for p in new.parameters())
    assert not new.training
    assert [p.requires_grad for p in new.factors()] == [False, True]
    assert new.bias is not None and new.bias.requires_grad
    torch.testing.assert_close(new.bias, layer.bias)
    if index == 0:
        assert new.recompute_intermediate
    else:
        assert lrk.LowRankConv2d.conv_options(new) == lrk.LowRankConv2d.conv_options(layer)
        assert new.kernel_size == layer.kernel_size


@pytest.mark.parametrize(
    "layer",
    [lrk.LowRankLinear(6, 5, 2, bias=False), lrk.LowRankConv2d(2, 3, 1, 2, bias=False)],
    ids=["linear", "conv"],
)
def test_with_rank_without_bias(layer):
    assert layer.with_rank(1).bias is None and layer.with_rank(2).bias is None


def test_shrinking_is_the_svd_of_the_fp32_product_in_float64():
    """The rank-2 product equals the float64 truncated SVD of the current product."""
    layer = lrk.LowRankLinear(12, 9, 4, dtype=torch.float64)
    product = _product64(layer)
    A, S, Bh = torch.linalg.svd(product, full_matrices=False)
    best = A[:, :2] @ torch.diag(S[:2]) @ Bh[:2]
    torch.testing.assert_close(layer.with_rank(2).weight_matrix(), best)


def test_with_rank_checks_the_rank():
    linear, conv = _fp32_layers()
    with pytest.raises(ValueError, match=r"min\(in_features, out_features\) = 9, got 10"):
        linear.with_rank(10)
    with pytest.raises(TypeError, match="rank must be an int"):
        linear.with_rank(2.0)
    with pytest.raises(ValueError, match=r"min\(out_channels=5, in_channels·kh·kw=27\) = 5, got 6"):
        conv.with_rank(6)
    with pytest.raises(TypeError, match="rank must be an int"):
        conv.with_rank("2")


def test_the_registry_matches_subclasses_and_leaves_conv1d_to_is_conv1d():
    from lowrank_kernels.layers import dense_kind, dense_type

    class MyLinear(nn.Linear):
        pass

    assert dense_type(MyLinear(3, 2)) is nn.Linear and dense_kind(MyLinear(3, 2)) == "Linear"
    assert dense_type(nn.Conv2d(1, 1, 1)) is nn.Conv2d
    assert dense_type(nn.Conv1d(1, 1, 1)) is None and dense_kind(nn.Conv1d(1, 1, 1)) is None
    assert dense_type(lrk.LowRankLinear(3, 2, 1)) is None
