"""The Triton kernels, run for real: under the interpreter on CPU (CI), compiled on GPU.

The shared backend matrix (tests/test_backend_matrix.py) checks the numerics of the op on
this backend; here are the kernel's own paths (pinned configs, splits, rank chunks,
strided bias, inf), its launch-configuration choice and the GPU stress tests, every
value against a float64 reference (docs/design.md, numerics rule).
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.ops.autotune import MeasuredDispatch
from lowrank_kernels.ops.backends import BACKENDS
from lowrank_kernels.ops.measurement import m_bucket
from lowrank_kernels.testing import (
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


@pytest.mark.parametrize("r", [5, 40])  # Z on chip, and through memory in two chunks
@pytest.mark.parametrize("split", [1, 2, 3])
def test_intermediate_written_exactly_once_into_poisoned_memory(split, r):
    from lowrank_kernels import triton_ops

    M, K, N = 33, 20, 70
    a = torch.randn(M, K, device=DEVICE)
    b, c, bias = _factors(K, N, r, torch.float32, True)
    torch.empty(4 * (M * N + M * r), device=DEVICE).fill_(float("nan"))  # poison the pool
    out, z = triton_ops.chain_forward(a, b, c, bias, True, split=split)
    ref_z = a.double() @ b.double()
    assert torch.isfinite(z).all() and torch.isfinite(out).all()
    assert z.shape == (M, r) and z.is_contiguous()
    assert rel_error(z, ref_z) < 1e-6
    assert rel_error(out, linear_reference64(a, b, c, bias)) < 1e-6
    out2, none = triton_ops.chain_forward(a, b, c, bias, False, split=split)
    assert none is None
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@pytest.mark.parametrize(
    "config",
    [
        (16, 16, 16, 16, 1, 1),  # r = 37 in three 16-wide chunks
        (32, 64, 16, 64, 1, 1),  # r = 37 on chip, one 64-wide chunk
        (16, 32, 32, 32, 1, 1),  # the interpreter default: two chunks
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pinned_configs_match_reference(config, dtype):
    """Every code path of the kernel (Z on chip or chunked, any tile) on forward and the
    dX-shaped call (transposed factor views), against float64."""
    from lowrank_kernels import triton_ops

    M, K, N, r = 45, 50, 70, 37
    cfg = triton_ops.ChainConfig(*config)
    a = torch.randn(M, K, dtype=dtype, device=DEVICE)
    b, c, bias = _factors(K, N, r, dtype, True)
    bound = 1e-5 if dtype == torch.float32 else 2e-2
    for split in (1, 2):
        out, z = triton_ops.chain_forward(a, b, c, bias, True, config=cfg, split=split)
        assert rel_error(out, linear_reference64(a, b, c, bias)) < bound
        assert rel_error(z, a.double() @ b.double()) < bound
        dy = torch.randn(M, N, dtype=dtype, device=DEVICE)
        dx, dz = triton_ops.chain_forward(dy, c.t(), b.t(), None, True, config=cfg, split=split)
        assert rel_error(dx, (dy.double() @ c.double().t()) @ b.double().t()) < bound
        assert rel_error(dz, dy.double() @ c.double().t()) < bound


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("M", [1, 16, 17, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_rank_has_gpu_configs_with_bounded_padding(M, dtype, aligned):
    """For every r in 1..1024 the kernel offers GPU launch configurations, and none pads
    the rank by more than 1.25× (or than rounding up to the 16-wide MMA step does)."""
    from lowrank_kernels import triton_ops

    for r in range(1, 1025):
        configs = triton_ops.candidate_configs(M, r, dtype, aligned=aligned, interpreted=False)
        assert configs, r
        allowed = max(1.25 * r, -(-r // 16) * 16)
        for cfg in configs:
            assert cfg.padded_rank(r) <= allowed, (r, cfg)
            assert cfg.block_r % 16 == 0 and cfg.block_r & (cfg.block_r - 1) == 0
        if r >= 64:
            assert all(cfg.padded_rank(r) <= 1.25 * r for cfg in configs), r
    # r = 192 (GPT-2-small at d/4) runs as whole chunks, not as 256
    configs = triton_ops.candidate_configs(M, 192, dtype, aligned=aligned, interpreted=False)
    assert {cfg.padded_rank(192) for cfg in configs} == {192}


def test_alignment_class_follows_sizes_and_strides():
    from lowrank_kernels import triton_ops

    x, V, U = torch.randn(7, 64), torch.randn(64, 32), torch.randn(32, 48)
    assert triton_ops.chain_aligned(x, V, U)  # M = 7 does not matter
    assert triton_ops.chain_aligned(torch.randn(5, 48), U.t(), V.t())  # the dX views
    assert not triton_ops.chain_aligned(torch.randn(7, 40), torch.randn(40, 32), U)
    assert not triton_ops.chain_aligned(x, torch.randn(64, 33)[:, :32], U)  # row stride 33
    assert not triton_ops.chain_aligned(torch.randn(7 * 64 + 1)[1:].view(7, 64), V, U)  # +4 B


def test_split_over_n_only_when_row_blocks_cannot_fill_the_gpu():
    from lowrank_kernels import triton_ops

    cfg = triton_ops.ChainConfig(128, 64, 64, 64, 8, 3)
    assert triton_ops.split_for(4096 * 128, 4096, cfg, 132, interpreted=False) == 1
    assert triton_ops.split_for(16, 4096, cfg, 132, interpreted=False) == 8  # capped
    assert triton_ops.split_for(16, 100, cfg, 132, interpreted=False) == 2  # col tiles
    assert triton_ops.split_for(3, 200, cfg, 1, interpreted=True) == 2  # CPU tests


@pytest.mark.parametrize("bias_kind", ["column_of_matrix", "stride_0", "every_other"])
def test_bias_is_read_through_its_strides(bias_kind):
    K, N, r = 20, 30, 6
    V, U, _ = _factors(K, N, r, torch.float32, False)
    bias = {
        "column_of_matrix": lambda: torch.randn(N, 3, device=DEVICE)[:, 0],  # stride 3
        "stride_0": lambda: torch.randn(1, device=DEVICE).expand(N),  # one value, stride 0
        "every_other": lambda: torch.randn(2 * N, device=DEVICE)[::2],  # stride 2
    }[bias_kind]()
    assert not bias.is_contiguous()
    x = torch.randn(9, K, device=DEVICE)
    check_backend_against_reference("triton", x, V, U, bias)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's inf·0
@pytest.mark.parametrize("r", [5, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inf_in_x_gives_the_chains_non_finite_pattern(r, dtype):
    """An inf in one row of x makes that row ±inf in the reference chain when every
    product is positive; padded rank lanes must not turn it into NaN, and other rows
    stay finite."""
    lrk.set_backend("triton")
    K, N = 24, 40
    x = torch.randn(6, K, dtype=dtype, device=DEVICE)
    x[2, 7] = float("inf")
    V = torch.rand(K, r, dtype=dtype, device=DEVICE) + 0.1
    U = torch.rand(r, N, dtype=dtype, device=DEVICE) + 0.1
    y = lrk.lowrank_linear(x, V, U)
    ref = (x.double() @ V.double()) @ U.double()
    assert torch.equal(torch.isposinf(y), torch.isposinf(ref))
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isposinf(y[2]).all()
    finite = torch.ones(6, dtype=torch.bool)
    finite[2] = False
    assert rel_error(y[finite], ref[finite]) < (1e-5 if dtype == torch.float32 else 2e-2)


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
        (a, b, c, bias, True, [], 0),
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
    assert decision.choice == "torch" and decision.times_ms == {"triton": 5.0, "torch": 1.0}
    assert rel_error(out, linear_reference64(a, b, c)) < 1e-6
    # M = 7 falls in the same bucket (8): no new measurement
    dispatch.chain(torch.randn(7, 12), b, c, None, False)
    assert timer.calls == 2 and len(dispatch.decisions) == 1
    # M = 9 is a new bucket, where triton wins this time
    dispatch.chain(torch.randn(9, 12), b, c, None, False)
    assert timer.calls == 4
    assert [d.choice for d in dispatch.decisions.values()] == ["torch", "triton"]
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


def test_config_tuning_measures_each_candidate_once_per_shape(monkeypatch):
    """On a GPU the backend times every candidate configuration of a shape and keeps the
    fastest (here with a fake timer and two interpreter-sized candidates)."""
    from lowrank_kernels import triton_ops
    from lowrank_kernels.ops.backends.triton_backend import TritonBackend

    first = triton_ops.ChainConfig(16, 32, 32, 32, 1, 1)
    second = triton_ops.ChainConfig(16, 16, 16, 16, 1, 1)
    monkeypatch.setattr(
        triton_ops, "candidate_configs", lambda M, r, dtype, aligned: (first, second)
    )
    used = []
    real = triton_ops.chain_forward

    def spy(*args, config=None, **kwargs):
        used.append(config)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(triton_ops, "chain_forward", spy)
    times = iter([3.0, 1.0])
    backend = TritonBackend(timer=lambda fn: (fn(), next(times))[1])
    a = torch.randn(9, 20, device=DEVICE)
    b, c, bias = _factors(20, 30, 6, torch.float32, True)
    out, _ = backend.chain(a, b, c, bias, False)
    (decision,) = backend.config_decisions.values()
    assert decision.choice == repr(second) and decision.times_ms == {
        repr(first): 3.0,
        repr(second): 1.0,
    }
    assert used[-1] == second
    assert rel_error(out, linear_reference64(a, b, c, bias)) < 1e-6
    used.clear()
    backend.chain(torch.randn(12, 20, device=DEVICE), b, c, bias, False)  # same bucket (16)
    assert used == [second] and len(backend.config_decisions) == 1


def test_no_launchable_config_falls_back_to_the_chain_with_a_reason(monkeypatch):
    from lowrank_kernels import triton_ops
    from lowrank_kernels.ops.backends.triton_backend import TritonBackend

    def out_of_resources(*args, **kwargs):
        raise triton_ops.OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(triton_ops, "chain_forward", out_of_resources)
    a = torch.randn(5, 20, device=DEVICE)
    b, c, bias = _factors(20, 30, 6, torch.float32, True)
    with pytest.warns(RuntimeWarning, match="no Triton chain configuration launches.*shared"):
        out, z = TritonBackend().chain(a, b, c, bias, True)
    assert rel_error(out, linear_reference64(a, b, c, bias)) < 1e-6
    assert rel_error(z, a.double() @ b.double()) < 1e-6


def test_dispatch_keys_forward_and_dx_of_a_square_layer_apart():
    """Same sizes, different memory access: x·V·U and dY·Uᵀ·Vᵀ get separate decisions."""
    timer = _FakeTimer([1.0, 2.0, 2.0, 1.0])
    dispatch = MeasuredDispatch([BACKENDS["triton"], BACKENDS["torch"]], timer=timer)
    K = N = 24
    V, U, _ = _factors(K, N, 4, torch.float32, False)
    dispatch.chain(torch.randn(8, K), V, U, None, True)  # forward
    dispatch.chain(torch.randn(8, N), U.t(), V.t(), None, True)  # dX
    assert timer.calls == 4
    assert sorted(k.layout for k in dispatch.decisions) == ["rcc", "rrr"]
    assert [d.choice for d in dispatch.decisions.values()] == ["triton", "torch"]
