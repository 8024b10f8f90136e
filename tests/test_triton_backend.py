"""The Triton kernels, run for real: under the interpreter on CPU (CI), compiled on GPU.

Every value is checked against a float64 reference, held to DESIGN §2's bound:
at most 2× the error of PyTorch's own same-dtype two-GEMM chain.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.ops.autotune import MeasuredDispatch, m_bucket
from lowrank_kernels.ops.backends import BACKENDS
from tests.reference import (
    check_backend_against_reference,
    linear_reference64,
    rel_error,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _factors(K, N, r, dtype, bias, device=DEVICE):
    V = torch.randn(K, r, dtype=dtype, device=device) / K**0.5
    U = torch.randn(r, N, dtype=dtype, device=device) / r**0.5
    b = torch.randn(N, dtype=dtype, device=device) if bias else None
    return V, U, b


@pytest.mark.parametrize("M", [1, 5, 64, 130])
@pytest.mark.parametrize("r", [1, 5, 16, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_fp32(M, r, bias):
    K, N = 37, 45  # not multiples of 16
    x = torch.randn(M, K, device=DEVICE)
    check_backend_against_reference("triton", x, *_factors(K, N, r, torch.float32, bias))


@pytest.mark.parametrize("M,r", [(5, 3), (64, 33)])
def test_forward_and_grads_bf16(M, r):
    K, N = 40, 23
    x = torch.randn(M, K, dtype=torch.bfloat16, device=DEVICE)
    check_backend_against_reference("triton", x, *_factors(K, N, r, torch.bfloat16, True))


def test_three_d_and_non_contiguous_input():
    K, N, r = 21, 19, 5
    x = torch.randn(K, 3, 7, device=DEVICE).permute(1, 2, 0)  # [3, 7, K], a transposed view
    assert not x.is_contiguous()
    check_backend_against_reference("triton", x, *_factors(K, N, r, torch.float32, True))


def test_strided_factors():
    K, N, r = 20, 18, 6
    x = torch.randn(9, K, device=DEVICE)
    V = torch.randn(r, K, device=DEVICE).t()  # [K, r] with transposed strides
    U = torch.randn(N, r, device=DEVICE).t()[:, :N]
    check_backend_against_reference("triton", x, V, U, None)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_intermediate_written_exactly_once_into_poisoned_memory(split):
    import triton_ops

    M, K, N, r = 33, 20, 70, 5
    a = torch.randn(M, K, device=DEVICE)
    b, c, bias = _factors(K, N, r, torch.float32, True)
    torch.empty(M * N + M * r, device=DEVICE).fill_(float("nan"))  # poison the allocator's pool
    out, z = triton_ops.chain_forward(a, b, c, bias, True, split=split)
    ref_z = a.double() @ b.double()
    assert torch.isfinite(z).all() and torch.isfinite(out).all()
    assert rel_error(z, ref_z) < 1e-6
    assert rel_error(out, linear_reference64(a, b, c, bias)) < 1e-6
    out2, none = triton_ops.chain_forward(a, b, c, bias, False, split=split)
    assert none is None
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def test_both_paths_are_chosen_by_the_heuristic():
    import triton_ops

    small = triton_ops.choose_config(3, 40, 200, 8, torch.float32, torch.device(DEVICE))
    assert small.split > 1  # one row block: the split-N (small-M) path
    large = triton_ops.choose_config(4096, 40, 20, 8, torch.float32, torch.device(DEVICE))
    assert large.split == 1  # enough row blocks: no recompute
    assert triton_ops.padded_rank(1) == 16 and triton_ops.padded_rank(33) == 64


def test_empty_batch():
    lrk.set_backend("triton")
    V, U, b = _factors(8, 6, 2, torch.float32, True)
    x = torch.randn(0, 8, device=DEVICE, requires_grad=True)
    y = lrk.lowrank_linear(x, V, U, b)
    assert y.shape == (0, 6)
    y.sum().backward()
    assert x.grad.shape == (0, 8)


def test_float64_is_rejected_with_a_clear_error():
    lrk.set_backend("triton")
    V, U, _ = _factors(8, 6, 2, torch.float64, False)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lrk.lowrank_linear(torch.randn(3, 8, dtype=torch.float64, device=DEVICE), V, U)


def test_opcheck_triton_chain():
    a = torch.randn(6, 20, device=DEVICE)
    b, c, bias = _factors(20, 18, 3, torch.float32, True)
    torch.library.opcheck(
        torch.ops.lowrank.triton_chain.default,
        (a, b, c, bias, True, 0),
        test_utils=("test_schema", "test_faketensor"),
    )


class _FakeTimer:
    """Returns the given times in order, after really running each candidate."""

    def __init__(self, times_ms):
        self.times_ms = list(times_ms)
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return self.times_ms[self.calls - 1]


def test_measured_dispatch_picks_the_faster_and_caches_per_bucket():
    # candidates are timed in order (triton, torch); first bucket: torch is faster
    timer = _FakeTimer([5.0, 1.0, 0.5, 9.0])
    dispatch = MeasuredDispatch([BACKENDS["triton"], BACKENDS["torch"]], timer=timer)
    a, b, c = torch.randn(5, 12), torch.randn(12, 3), torch.randn(3, 7)
    out, _ = dispatch.chain(a, b, c, None, False)
    assert timer.calls == 2
    (decision,) = dispatch.decisions.values()
    assert decision.backend == "torch" and decision.times_ms == {"triton": 5.0, "torch": 1.0}
    assert rel_error(out, linear_reference64(a, b, c)) < 1e-6
    # M = 7 falls in the same bucket (8): no new measurement
    dispatch.chain(torch.randn(7, 12), b, c, None, False)
    assert timer.calls == 2 and len(dispatch.decisions) == 1
    # M = 9 is a new bucket, where triton wins this time
    dispatch.chain(torch.randn(9, 12), b, c, None, False)
    assert timer.calls == 4
    assert [d.backend for d in dispatch.decisions.values()] == ["torch", "triton"]
    assert m_bucket(1) == 1 and m_bucket(5) == 8 and m_bucket(8) == 8 and m_bucket(9) == 16


# --------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "M,K,N,r",
    [
        (16384, 4096, 4096, 64),
        (1024, 4096, 4096, 512),
        (16, 4096, 4096, 256),
        (4097, 1000, 3001, 33),
    ],
)
def test_gpu_large_shapes(dtype, M, K, N, r):
    x = torch.randn(M, K, dtype=dtype, device="cuda")
    check_backend_against_reference("triton", x, *_factors(K, N, r, dtype, True, "cuda"))


@pytest.mark.gpu
def test_gpu_fuzz_random_shapes():
    rng = random.Random(0)
    for _ in range(200):
        M, K, N = rng.randint(1, 3000), rng.randint(1, 1500), rng.randint(1, 1500)
        r = rng.randint(1, min(K, N, 300))
        dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        check_backend_against_reference(
            "triton", x, *_factors(K, N, r, dtype, rng.random() < 0.5, "cuda")
        )


@pytest.mark.gpu
def test_gpu_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    lrk.set_backend("triton")
    model = torch.nn.Sequential(
        lrk.LowRankLinear(256, 512, 32), torch.nn.GELU(), lrk.LowRankLinear(512, 128, 16)
    ).cuda()
    x = torch.randn(4, 64, 256, device="cuda")
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
