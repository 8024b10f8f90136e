"""The lowrank.linear op on the PyTorch reference backend: values, gradients, op contract."""

from __future__ import annotations

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.testing import (
    linear_grads64,
    linear_reference64,
    rel_error,
)

SHAPES = [  # (leading dims of x, K, N, r)
    ((1,), 19, 23, 1),
    ((7,), 19, 23, 3),
    ((128,), 37, 21, 17),
    ((2, 7), 19, 45, 3),
    ((3, 5, 4), 10, 9, 5),
]


def _inputs(lead, K, N, r, dtype, bias, noncontiguous=False):
    if noncontiguous:
        x = torch.randn(K, *lead, dtype=dtype).movedim(0, -1)  # a transposed view
        assert not x.is_contiguous() or x.numel() == K
    else:
        x = torch.randn(*lead, K, dtype=dtype)
    V = torch.randn(K, r, dtype=dtype) / K**0.5
    U = torch.randn(r, N, dtype=dtype) / r**0.5
    b = torch.randn(N, dtype=dtype) if bias else None
    return x, V, U, b


def test_recompute_intermediate_gives_same_gradients():
    x, V, U, b = _inputs((9,), 12, 10, 4, torch.float64, True)
    leaves = [t.requires_grad_() for t in (x, V, U, b)]
    saved = torch.autograd.grad(lrk.lowrank_linear(x, V, U, b).sum(), leaves)
    recomputed = torch.autograd.grad(
        lrk.lowrank_linear(x, V, U, b, recompute_intermediate=True).sum(), leaves
    )
    for a, c in zip(saved, recomputed, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def test_only_requested_gradients_are_computed():
    x, V, U, _ = _inputs((6,), 8, 5, 2, torch.float64, False)
    V.requires_grad_()
    y = lrk.lowrank_linear(x, V, U)
    (dV,) = torch.autograd.grad(y.sum(), [V])
    ref = linear_grads64(x, V, U, None, torch.ones_like(y))[1]
    assert rel_error(dV, ref) < 1e-12


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(bias):
    x, V, U, b = _inputs((2, 3), 6, 5, 2, torch.float64, bias)
    inputs = tuple(t.requires_grad_() for t in (x, V, U, b) if t is not None)
    fn = (lambda x, V, U, b: lrk.lowrank_linear(x, V, U, b)) if bias else lrk.lowrank_linear
    assert torch.autograd.gradcheck(fn, inputs)


def test_opcheck_public_and_internal_ops():
    x, V, U, b = _inputs((4, 3), 6, 5, 2, torch.float32, True)
    for t in (x, V, U, b):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.lowrank.linear.default, (x, V, U, b))
    torch.library.opcheck(torch.ops.lowrank._linear_forward.default, (x, V, U, b, True))
    torch.library.opcheck(torch.ops.lowrank._linear_forward.default, (x, V, U, None, False))


def test_empty_batch():
    x, V, U, b = _inputs((0,), 6, 5, 2, torch.float32, True)
    x.requires_grad_()
    y = lrk.lowrank_linear(x, V, U, b)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 6)


def test_autocast_behaves_like_nn_linear():
    x = torch.randn(4, 8)
    m = lrk.LowRankLinear(8, 6, 3)
    dense = torch.nn.Linear(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        y_dense = dense(x)
    assert y.dtype == y_dense.dtype == torch.bfloat16
    y.float().sum().backward()
    assert m.V.grad.dtype == torch.float32  # grads flow back to the fp32 parameters
    ref = linear_reference64(x, m.V, m.U, m.bias)
    assert rel_error(y, ref) < 2e-2


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        lrk.LowRankLinear(16, 32, 4), torch.nn.GELU(), lrk.LowRankLinear(32, 8, 3, bias=False)
    )
    x = torch.randn(2, 5, 16, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_eager = model(x)
    y_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), [x])
    (g_comp,) = torch.autograd.grad(y_comp.sum(), [x])
    torch.testing.assert_close(g_comp, g_eager)


def _f64_operands():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g)
    V = torch.randn(5, 3, dtype=torch.float64, generator=g)
    U = torch.randn(3, 6, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    return x, V, U, b


def test_forward_mode_ad_gives_the_true_tangent():
    """jvp of a linear map in x is the map of the tangent without bias: x·V·U → t·V·U."""
    import torch.autograd.forward_ad as fwAD

    x, V, U, b = _f64_operands()
    t = torch.randn_like(x)
    _, tangent = torch.func.jvp(lambda x: lrk.lowrank_linear(x, V, U, b), (x,), (t,))
    torch.testing.assert_close(tangent, (t @ V) @ U)
    with fwAD.dual_level():
        y = lrk.lowrank_linear(fwAD.make_dual(x, t), V, U, b)
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, (t @ V) @ U)


def test_torch_func_grad_vmap_and_jacrev():
    x, V, U, b = _f64_operands()
    dx = torch.func.grad(lambda x: lrk.lowrank_linear(x, V, U, b).sum())(x)
    torch.testing.assert_close(dx, linear_grads64(x, V, U, b, torch.ones(4, 6))[0])
    batched = torch.func.vmap(lambda row: lrk.lowrank_linear(row, V, U, b))(x)
    torch.testing.assert_close(batched, linear_reference64(x, V, U, b))
    jac = torch.func.jacrev(lambda x: lrk.lowrank_linear(x, V, U))(x[0])
    torch.testing.assert_close(jac, (V @ U).t())  # d y_n / d x_k = (V·U)[k, n]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_double_backward(backend):
    """Second derivatives through the op (e.g. a gradient penalty), checked numerically."""
    if backend == "triton" and "triton" not in lrk.available_backends():
        pytest.skip("triton is not available")
    lrk.set_backend(backend)
    x, V, U, b = (t.requires_grad_() for t in _f64_operands())
    if backend == "triton":  # the kernels take fp32 at most; gradgradcheck needs float64
        x, V, U, b = (t.detach().float().requires_grad_() for t in (x, V, U, b))
        y = lrk.lowrank_linear(x, V, U, b)
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        (gV,) = torch.autograd.grad(gx.sum(), V)
        x64, V64, U64, b64 = (t.detach().double().requires_grad_() for t in (x, V, U, b))
        y64 = (x64 @ V64) @ U64 + b64
        (gx64,) = torch.autograd.grad(y64.pow(2).sum(), x64, create_graph=True)
        (gV64,) = torch.autograd.grad(gx64.sum(), V64)
        torch.testing.assert_close(gV.double(), gV64, rtol=1e-4, atol=1e-4)
    else:
        assert torch.autograd.gradgradcheck(lambda *a: lrk.lowrank_linear(*a), (x, V, U, b))
