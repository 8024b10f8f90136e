"""One test matrix for every backend of the low-rank linear op.

backends × dtypes × shapes × options (bias, recompute_intermediate, operand strides),
each case holding the output and every gradient to the numerics rule of
``lowrank_kernels.testing`` (at most 2× the error of PyTorch's own same-dtype chain
against float64). CPU rows run in CI: the PyTorch reference and the real Triton kernels
under the interpreter. GPU rows are marked ``gpu`` (and the CUDA C++ backend also needs
``lowrank_kernels._C``). A new backend adds one ``pytest.param`` to ``BACKENDS``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest
import torch

from lowrank_kernels.ops.backends.cuda_backend import load_extension
from lowrank_kernels.testing import check_backend_against_reference

_needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
_needs_c = pytest.mark.skipif(load_extension() is None, reason="lowrank_kernels._C is not built")

BACKENDS = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("triton", "cpu", id="triton-interpreter", marks=_needs_triton),
    pytest.param("torch", "cuda", id="torch-cuda", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton-cuda", marks=[pytest.mark.gpu, _needs_triton]),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=[pytest.mark.gpu, _needs_c]),
    pytest.param("auto", "cuda", id="auto-cuda", marks=pytest.mark.gpu),
]

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]

SHAPES = [  # (leading dims of x, K, N, r): odd sizes, rank 1, 3-D input, ranks past a chunk
    pytest.param((1,), 19, 23, 1, id="M1-r1"),
    pytest.param((7,), 37, 45, 5, id="M7-r5"),
    pytest.param((2, 9), 40, 70, 40, id="3d-r40"),
    pytest.param((33,), 64, 48, 33, id="M33-r33"),
    pytest.param((4097,), 1000, 3001, 512, id="M4097-r512", marks=pytest.mark.gpu),
    pytest.param((16,), 4096, 4096, 256, id="M16-r256", marks=pytest.mark.gpu),
]


@dataclass(frozen=True)
class Options:
    bias: bool
    recompute: bool
    layout: str  # "contiguous" | "transposed" (x, V, U as transposed views) | "strided"


OPTIONS = [
    pytest.param(Options(True, False, "contiguous"), id="bias"),
    pytest.param(Options(False, True, "contiguous"), id="recompute"),
    pytest.param(Options(True, True, "transposed"), id="bias-recompute-transposed"),
    pytest.param(Options(True, False, "strided"), id="bias-strided"),
]


def _operands(lead, K, N, r, dtype, device, options: Options):
    def make(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).to(device=device, dtype=dtype)

    if options.layout == "contiguous":
        x, V, U = make(*lead, K), make(K, r, scale=K**-0.5), make(r, N, scale=r**-0.5)
        bias = make(N) if options.bias else None
    elif options.layout == "transposed":
        x = make(K, *lead).movedim(0, -1)
        V, U = make(r, K, scale=K**-0.5).t(), make(N, r, scale=r**-0.5).t()
        bias = make(N) if options.bias else None
    else:  # padded rows (slices of wider tensors) and a bias with stride 2
        x = make(*lead, K + 3)[..., :K]
        V, U = make(K, r + 5, scale=K**-0.5)[:, :r], make(r, N + 7, scale=r**-0.5)[:, :N]
        bias = make(2 * N)[::2] if options.bias else None
    return x, V, U, bias


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("lead,K,N,r", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_output_and_every_gradient_within_the_numerics_rule(
    backend, device, dtype, lead, K, N, r, options
):
    x, V, U, bias = _operands(lead, K, N, r, dtype, device, options)
    check_backend_against_reference(backend, x, V, U, bias, recompute=options.recompute)


@pytest.mark.parametrize("lead,K,N,r", SHAPES)
def test_float64_on_the_reference_backend(lead, K, N, r):
    x, V, U, bias = _operands(lead, K, N, r, torch.float64, "cpu", Options(True, True, "strided"))
    check_backend_against_reference("torch", x, V, U, bias, recompute=True)
