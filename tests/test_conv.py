"""LowRankConv2d: SVD factorization, exact composition, round trip, init and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.nn import LowRankConv2d
from lowrank_kernels.testing import rel_error

CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, padding_mode
    (3, 8, 3, 1, 1, 1, "zeros"),
    (4, 6, (3, 2), 2, (1, 0), 1, "zeros"),
    (5, 7, 3, 1, 2, 2, "reflect"),
    (6, 4, 1, 1, 0, 1, "zeros"),
    (4, 5, 3, 1, "same", 1, "circular"),
]


def _dense64(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 forward of ``conv`` (or of its hyper-parameters with ``weight``)."""
    ref = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        dtype=torch.float64,
    )
    with torch.no_grad():
        ref.weight.copy_(conv.weight.double() if weight is None else weight.double())
        if conv.bias is not None:
            ref.bias.copy_(conv.bias.double())
    return ref(x.double())


@pytest.mark.parametrize("case", CONV_CASES)
def test_full_rank_reproduces_dense_conv(case):
    cin, cout, k, stride, padding, dilation, mode = case
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, padding_mode=mode)
    full = min(cout, cin * conv.kernel_size[0] * conv.kernel_size[1])
    low = LowRankConv2d.from_conv2d(conv, full)
    x = torch.randn(2, cin, 9, 8)
    out = low(x)
    ref = _dense64(conv, x)
    assert out.shape == ref.shape
    assert rel_error(out, ref) < 1e-5
    assert low.stride == conv.stride and low.dilation == conv.dilation
    assert low.padding == conv.padding and low.padding_mode == mode


def test_reduced_rank_is_best_approximation_and_exact_composition():
    conv = nn.Conv2d(6, 10, 3, padding=1)
    r = 4
    low = LowRankConv2d.from_conv2d(conv, r)
    W = conv.weight.detach().double().reshape(10, -1).numpy()
    s = np.linalg.svd(W, compute_uv=False)
    product = (
        low.conv_u.weight.detach().double().reshape(10, r)
        @ low.conv_v.weight.detach().double().reshape(r, -1)
    ).numpy()
    # Eckart–Young: the truncation error is the norm of the discarded singular values
    err = np.linalg.norm(W - product)
    assert err == pytest.approx(np.sqrt((s[r:] ** 2).sum()), rel=1e-5)
    # √S split: both factors carry Σ_{i<r} s_i as squared Frobenius norm
    assert low.conv_u.weight.detach().double().norm().item() ** 2 == pytest.approx(
        s[:r].sum(), rel=1e-5
    )
    assert low.conv_v.weight.detach().double().norm().item() ** 2 == pytest.approx(
        s[:r].sum(), rel=1e-5
    )
    # the two convs compose to exactly the dense conv with the product weight
    x = torch.randn(2, 6, 7, 7)
    ref = _dense64(conv, x, torch.from_numpy(product).reshape(conv.weight.shape))
    assert rel_error(low(x), ref) < 1e-5


def test_to_conv2d_round_trip():
    conv = nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), bias=True)
    low = LowRankConv2d.from_conv2d(conv, 5)
    back = low.to_conv2d()
    assert isinstance(back, nn.Conv2d)
    assert (back.stride, back.padding, back.kernel_size) == (conv.stride, conv.padding, (3, 5))
    x = torch.randn(3, 4, 11, 10)
    assert rel_error(back(x), low(x).double()) < 1e-5
    full = LowRankConv2d.from_conv2d(conv, 8).to_conv2d()
    assert rel_error(full.weight, conv.weight) < 1e-5
    assert torch.equal(full.bias, conv.bias)


def test_parameter_count_and_submodules():
    low = LowRankConv2d(16, 32, 3, rank=4, padding=1)
    n = sum(p.numel() for p in low.parameters())
    assert n == 4 * (16 * 9 + 32) + 32
    assert low.conv_v.weight.shape == (4, 16, 3, 3) and low.conv_v.bias is None
    assert low.conv_u.weight.shape == (32, 4, 1, 1) and low.conv_u.bias.shape == (32,)
    assert LowRankConv2d(16, 32, 3, rank=4, bias=False).bias is None
    assert low(torch.randn(1, 16, 5, 5)).shape == (1, 32, 5, 5)


def test_default_init_matches_dense_conv_variance():
    # product entries should have nn.Conv2d's default variance 1/(3·fan_in)
    cin, cout, k, r = 32, 256, 3, 64
    low = LowRankConv2d(cin, cout, k, rank=r)
    product = low.weight_matrix()
    fan_in = cin * k * k
    assert product.var().item() == pytest.approx(1.0 / (3 * fan_in), rel=0.15)


def test_dtype_and_requires_grad_kept():
    conv = nn.Conv2d(3, 4, 3).double()
    conv.weight.requires_grad_(False)
    low = LowRankConv2d.from_conv2d(conv, 2)
    assert low.conv_v.weight.dtype == torch.float64
    assert not low.conv_v.weight.requires_grad and not low.conv_u.weight.requires_grad
    assert low.conv_u.bias.requires_grad


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="groups"):
        LowRankConv2d.from_conv2d(nn.Conv2d(4, 8, 3, groups=2), 2)
    with pytest.raises(ValueError, match="rank"):
        LowRankConv2d.from_conv2d(nn.Conv2d(2, 8, 1), 3)  # full rank is min(8, 2) = 2
    with pytest.raises(ValueError, match="rank"):
        LowRankConv2d(3, 4, 3, rank=0)
    with pytest.raises(TypeError, match="rank"):
        LowRankConv2d(3, 4, 3, rank=2.0)
    with pytest.raises(ValueError, match="in_channels"):
        LowRankConv2d(0, 4, 3, rank=1)
    with pytest.raises(TypeError, match=r"nn\.Conv2d"):
        LowRankConv2d.from_conv2d(nn.Linear(3, 3), 1)


def test_exported_at_top_level():
    assert lrk.LowRankConv2d is LowRankConv2d
    x = torch.randn(1, 3, 6, 6)
    low = lrk.LowRankConv2d(3, 4, 3, rank=2, stride=2, padding=1, dilation=1)
    assert low(x).shape == F.conv2d(x, torch.zeros(4, 3, 3, 3), stride=2, padding=1).shape


def test_weight_is_the_dense_equivalent_kernel_and_read_only():
    torch.manual_seed(0)
    conv = LowRankConv2d(3, 4, (3, 2), 2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    u = conv.conv_u.weight.detach().reshape(4, 2).numpy()
    v = conv.conv_v.weight.detach().reshape(2, -1).numpy()
    expected = torch.from_numpy(u @ v).reshape(4, 3, 3, 2)
    torch.testing.assert_close(conv.weight, expected)
    torch.testing.assert_close(F.conv2d(x, conv.weight, conv.bias, padding=1), conv(x))
    with pytest.raises(AttributeError, match="read-only"):
        conv.weight = nn.Parameter(expected)
