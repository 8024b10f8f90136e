"""Every bad input raises before any kernel runs, naming the argument."""

from __future__ import annotations

import pytest
import torch

import lowrank_kernels as lrk


def _ok(K=6, N=5, r=2, dtype=torch.float32):
    return (
        torch.randn(3, K, dtype=dtype),
        torch.randn(K, r, dtype=dtype),
        torch.randn(r, N, dtype=dtype),
    )


def test_x_last_dim_must_match_V():
    _, V, U = _ok()
    with pytest.raises(ValueError, match=r"x\.shape\[-1\] must equal V\.shape\[0\]"):
        lrk.lowrank_linear(torch.randn(3, 7), V, U)


def test_U_rows_must_match_rank():
    x, V, _ = _ok()
    with pytest.raises(ValueError, match=r"U\.shape\[0\] must equal V\.shape\[1\]"):
        lrk.lowrank_linear(x, V, torch.randn(3, 5))


def test_bias_shape():
    x, V, U = _ok()
    with pytest.raises(ValueError, match=r"bias must have shape \[N\] = \(5,\)"):
        lrk.lowrank_linear(x, V, U, torch.randn(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        lrk.lowrank_linear(x, V, U, torch.randn(1, 5))


@pytest.mark.parametrize("which", ["V", "U"])
def test_factors_must_be_2d(which):
    x, V, U = _ok()
    if which == "V":
        V = V[None]
    else:
        U = U.reshape(-1)
    with pytest.raises(ValueError, match=f"{which} must be 2-D"):
        lrk.lowrank_linear(x, V, U)


def test_rank_zero():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lrk.lowrank_linear(torch.randn(3, 6), torch.randn(6, 0), torch.randn(0, 5))


def test_scalar_x():
    _, V, U = _ok(K=1)
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        lrk.lowrank_linear(torch.tensor(1.0), V, U)


def test_mismatched_dtypes_outside_autocast():
    x, V, U = _ok()
    with pytest.raises(TypeError, match=r"V must have the same dtype as x \(torch.float32\)"):
        lrk.lowrank_linear(x, V.double(), U)
    with pytest.raises(TypeError, match="bias must have the same dtype as x"):
        lrk.lowrank_linear(x, V, U, torch.randn(5, dtype=torch.bfloat16))


def test_integer_input_rejected():
    _, V, U = _ok()
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        lrk.lowrank_linear(torch.ones(3, 6, dtype=torch.int64), V, U)


def test_non_tensor_rejected():
    _, V, U = _ok()
    # the op schema rejects it, naming the argument and the expected type
    with pytest.raises(RuntimeError, match=r"Expected a value of type 'Tensor' for argument 'x'"):
        lrk.lowrank_linear([[1.0] * 6], V, U)


def test_mismatched_devices():
    x, V, U = _ok()
    with pytest.raises(RuntimeError, match=r"U must be on the same device as x \(cpu\)"):
        lrk.lowrank_linear(x, V, U.to("meta"))


def test_module_rejects_bad_rank_and_features():
    with pytest.raises(
        ValueError, match=r"rank must be between 1 and min\(in_features, out_features\) = 4"
    ):
        lrk.LowRankLinear(4, 8, 5)
    with pytest.raises(ValueError, match="rank must be between 1"):
        lrk.LowRankLinear(4, 8, 0)
    with pytest.raises(TypeError, match="rank must be an int"):
        lrk.LowRankLinear(4, 8, 2.5)
    with pytest.raises(ValueError, match="LowRankLinear: in_features must be an int >= 1, got 0"):
        lrk.LowRankLinear(0, 8, 1)
    with pytest.raises(TypeError, match=r"linear must be an nn\.Linear"):
        lrk.LowRankLinear.from_linear(torch.nn.Conv2d(2, 2, 1), 1)
