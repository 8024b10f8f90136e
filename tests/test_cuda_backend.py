"""The ``cuda`` backend (``lowrank_kernels._C``, kernels in ``csrc/``), run for real on a GPU.

The shared backend matrix (tests/test_backend_matrix.py) checks its numerics; here are
the CUDA-specific checks: direct op calls into poisoned memory, compile, and the
not-built behaviour on CPU. GPU tests are marked ``gpu`` and skipped where ``_C`` is not
built.
The kernel logic is also exercised without a GPU by tests/test_csrc_compile.py (emulated).
"""

from __future__ import annotations

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.ops.backends.cuda_backend import extension_info, load_extension
from lowrank_kernels.testing import (
    FLOOR,
    error_bound,
    linear_reference64,
    rel_error,
)

HAS_C = load_extension() is not None
needs_c = pytest.mark.skipif(not HAS_C, reason="lowrank_kernels._C is not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _factors(K, N, r, dtype, bias, device="cuda"):
    V = torch.randn(K, r, dtype=dtype, device=device) / K**0.5
    U = torch.randn(r, N, dtype=dtype, device=device) / r**0.5
    b = torch.randn(N, dtype=dtype, device=device) if bias else None
    return V, U, b


@pytest.mark.gpu
@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N,r", [(33, 20, 70, 5), (5, 37, 300, 33), (130, 64, 45, 512)])
def test_chain_writes_every_element_into_poisoned_memory(dtype, M, K, N, r):
    """Outputs land in a freed NaN block; strided a/b/c/bias; z checked directly."""
    op = torch.ops.lowrank_cuda.chain
    a = torch.randn(K, M, dtype=dtype, device="cuda").t()  # column-major A
    b = torch.randn(r, K, dtype=dtype, device="cuda").t() / K**0.5  # like Uᵀ in backward
    c = torch.randn(r, N, dtype=dtype, device="cuda") / r**0.5
    bias = torch.randn(2 * N, dtype=dtype, device="cuda")[::2]  # stride 2
    poison = torch.empty(4 * (M * N + M * r) + 4096, dtype=dtype, device="cuda")
    poison.fill_(float("nan"))
    del poison  # the caching allocator hands this NaN block to the op's outputs
    out, z = op(a, b, c, bias, True)
    assert out.shape == (M, N) and out.is_contiguous() and out.dtype == dtype
    assert z.shape == (M, r) and z.is_contiguous() and z.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(z).all()

    z64 = a.double() @ b.double()
    chain_z = a @ b
    assert rel_error(z, z64) <= error_bound(chain_z, z64, FLOOR[dtype])
    ref = z64 @ c.double() + bias.double()
    assert rel_error(out, ref) <= error_bound(torch.addmm(bias, chain_z, c), ref, FLOOR[dtype])

    out2, empty = op(a, b, c, bias, False)
    assert empty.shape == (0, r)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)  # deterministic, z or not


@pytest.mark.gpu
@needs_c
def test_float64_and_huge_rank_use_the_two_gemm_path():
    op = torch.ops.lowrank_cuda.chain
    for dtype, r in [(torch.float64, 7), (torch.float16, 4096)]:  # 4096: Z exceeds smem
        a = torch.randn(40, 24, dtype=dtype, device="cuda")
        b = torch.randn(24, r, dtype=dtype, device="cuda") / 24**0.5
        c = torch.randn(r, 30, dtype=dtype, device="cuda") / r**0.5
        out, z = op(a, b, c, None, True)
        ref = linear_reference64(a, b, c)
        chain = (a @ b) @ c
        assert rel_error(out, ref) <= error_bound(chain, ref, FLOOR[dtype])
        assert z.shape == (40, r) and z.is_contiguous()


@pytest.mark.gpu
@needs_c
def test_empty_batch_and_bad_input():
    lrk.set_backend("cuda")
    V, U, b = _factors(8, 6, 2, torch.float32, True)
    x = torch.randn(0, 8, device="cuda", requires_grad=True)
    y = lrk.lowrank_linear(x, V, U, b)
    assert y.shape == (0, 6)
    y.sum().backward()
    assert x.grad.shape == (0, 8)

    op = torch.ops.lowrank_cuda.chain
    a = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match=r"b.shape\[0\] must equal a.shape\[1\]"):
        op(a, U, U, None, False)
    with pytest.raises(TypeError, match="b must have a's dtype"):
        op(a, V.half(), U, None, False)
    with pytest.raises(RuntimeError, match="must be on a's device"):
        op(a, V.cpu(), U, None, False)


@pytest.mark.gpu
@pytest.mark.slow
@needs_c
def test_64_bit_indexing():
    """M·K > 2³¹ elements: offsets must not wrap (checks the last rows, which would)."""
    M, K, N, r = 2**31 // 64 + 17, 64, 16, 8
    x = torch.randn(M, K, dtype=torch.float16, device="cuda")
    V, U, b = _factors(K, N, r, torch.float16, True)
    out, z = torch.ops.lowrank_cuda.chain(x, V, U, b, True)
    tail = slice(M - 300, M)
    ref = linear_reference64(x[tail], V, U, b)
    chain = torch.addmm(b, x[tail] @ V, U)
    assert rel_error(out[tail], ref) <= error_bound(chain, ref, FLOOR[torch.float16])
    z_ref = x[tail].double() @ V.double()
    assert rel_error(z[tail], z_ref) <= error_bound(x[tail] @ V, z_ref, FLOOR[torch.float16])


@pytest.mark.gpu
@needs_c
def test_opcheck_cuda_chain():
    a = torch.randn(6, 20, device="cuda")
    b, c, bias = _factors(20, 18, 3, torch.float32, True)
    torch.library.opcheck(torch.ops.lowrank_cuda.chain.default, (a, b, c, bias, True))
    torch.library.opcheck(
        torch.ops.lowrank_cuda.chain.default, (a, b.t().contiguous().t(), c, None, False)
    )


@pytest.mark.gpu
@needs_c
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    lrk.set_backend("cuda")
    model = torch.nn.Sequential(
        lrk.LowRankLinear(256, 512, 32), torch.nn.GELU(), lrk.LowRankLinear(512, 128, 16)
    ).cuda()
    x = torch.randn(4, 64, 256, device="cuda", requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y_eager = model(x)
    (gx_eager,) = torch.autograd.grad(y_eager.sum(), x)
    y_comp = compiled(x)
    (gx_comp,) = torch.autograd.grad(y_comp.sum(), x)
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(gx_comp, gx_eager)


@needs_c
def test_build_info_reports_archs_and_cuda_version():
    info = extension_info()
    assert info is not None
    archs = info["cuda_archs"].split(";")
    assert archs and all(a.rstrip("a").isdigit() for a in archs), info
    major, minor = info["cuda_version"].split(".")
    assert major.isdigit() and minor.isdigit(), info


# --------------------------------------------------------------------------- CPU


@pytest.mark.skipif(HAS_C, reason="lowrank_kernels._C is built here")
def test_without_the_extension_the_backend_explains_how_to_build_it():
    assert extension_info() is None
    assert "cuda" not in lrk.available_backends()
    with pytest.raises(
        RuntimeError, match=r"lowrank_kernels\._C is not built.*--no-build-isolation"
    ):
        lrk.set_backend("cuda")
    assert lrk.get_backend() != "cuda"
