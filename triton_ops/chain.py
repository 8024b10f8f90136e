"""Fused rank-r chain ``out = (A·B)·C + bias`` — the one kernel behind forward and dX.

Layering (Liger-Kernel habit): private ``_chain_kernel`` → host ``chain_forward`` →
op registration ``lowrank::triton_chain`` (``torch.library.triton_op``).

Each program owns a block of ``BLOCK_M`` rows of A. It computes that block's
intermediate ``Z = A·B`` (``[BLOCK_M, R_PAD]``, fp32 accumulate) once, keeps it in
registers, and then loops over the output column tiles ``n0, n0 + SPLIT·BLOCK_N,
…`` writing ``Z·C + bias``. With ``SPLIT = 1`` (the row-block path) every output
tile of the block is written by the one program that computed Z, so Z is never
recomputed (the fusion trap of DESIGN §2). When ``M / BLOCK_M`` programs cannot
fill the GPU, the host raises ``SPLIT`` (grid axis 1): each of the SPLIT programs
of a row block recomputes Z — a bounded ``SPLIT``-fold recompute of the cheap
``M·K·r`` half — and writes every SPLIT-th column tile (the small-M path).

Numerics: fp32 accumulation in both products. For fp16/bf16 inputs Z is rounded to
the input dtype before the second product, exactly where the PyTorch chain rounds
it; for fp32 inputs Z stays fp32 (the chain would round to fp32 too, a no-op).
fp32 products use TF32 tensor cores iff ``torch.backends.cuda.matmul.allow_tf32``.
Under the Triton interpreter bf16 operands are upcast to fp32 before ``tl.dot``
(the interpreter's bf16 dot is wrong) and fp32 → bf16 rounding is done by hand (its
cast truncates); products of bf16 values are exact in fp32, so both match what
the tensor cores compute on the GPU.

The rank is padded to ``R_PAD``, the next power of two ≥ max(r, 16) (``tl.arange``
needs a power of two); padded columns are masked to zero and never stored.
All row/column offsets are computed in int64, so M·K ≥ 2³¹ is safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import INTERPRETED


@triton.jit
def _downcast(x, dtype: tl.constexpr, MANUAL_BF16_ROUNDING: tl.constexpr):
    """fp32 → ``dtype`` rounding to nearest even, as the GPU and torch do.

    The interpreter's fp32 → bf16 cast truncates, so there the rounding is done on the
    bits (finite values only, which is all the tests feed it).
    """
    if MANUAL_BF16_ROUNDING:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _chain_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, out_ptr, z_ptr,
    M, K, N, R,
    stride_am, stride_ak,
    stride_bk, stride_br,
    stride_cr, stride_cn,
    stride_om, stride_on,
    stride_zm, stride_zr,
    HAS_BIAS: tl.constexpr,
    WRITE_Z: tl.constexpr,
    ROUND_Z: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    MANUAL_BF16_ROUNDING: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    R_PAD: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_split = tl.program_id(1)
    split = tl.num_programs(1)

    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    ranks = tl.arange(0, R_PAD)
    rank_mask = ranks < R
    ks = tl.arange(0, BLOCK_K)

    # Stage 1: Z = A[rows, :] · B, accumulated in fp32, kept on chip.
    z = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    a_rows = a_ptr + rows[:, None] * stride_am
    for k0 in range(0, K, BLOCK_K):
        k_idx = (k0 + ks).to(tl.int64)
        k_mask = k_idx < K
        a = tl.load(
            a_rows + k_idx[None, :] * stride_ak, mask=row_mask[:, None] & k_mask[None, :], other=0.0
        )
        b = tl.load(
            b_ptr + k_idx[:, None] * stride_bk + ranks[None, :] * stride_br,
            mask=k_mask[:, None] & rank_mask[None, :],
            other=0.0,
        )
        if DOT_IN_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        z = tl.dot(a, b, z, input_precision=INPUT_PRECISION)

    z_in = _downcast(z, z_ptr.dtype.element_ty, MANUAL_BF16_ROUNDING)
    if WRITE_Z:  # noqa: SIM102 (constexpr branch, then a runtime one)
        if pid_split == 0:
            tl.store(
                z_ptr + rows[:, None] * stride_zm + ranks[None, :] * stride_zr,
                z_in,
                mask=row_mask[:, None] & rank_mask[None, :],
            )
    if ROUND_Z:
        z = z_in

    # Stage 2: every SPLIT-th output column tile of this row block.
    cols_in_tile = tl.arange(0, BLOCK_N)
    for n0 in range(pid_split * BLOCK_N, N, split * BLOCK_N):
        cols = (n0 + cols_in_tile).to(tl.int64)
        col_mask = cols < N
        c = tl.load(
            c_ptr + ranks[:, None] * stride_cr + cols[None, :] * stride_cn,
            mask=rank_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        if DOT_IN_FP32:
            acc = tl.dot(z.to(tl.float32), c.to(tl.float32), input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(z.to(c.dtype), c, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
                 _downcast(acc, out_ptr.dtype.element_ty, MANUAL_BF16_ROUNDING),
                 mask=row_mask[:, None] & col_mask[None, :])  # fmt: skip


@dataclass(frozen=True)
class ChainConfig:
    """Launch parameters of one ``_chain_kernel`` call."""

    block_m: int
    block_n: int
    block_k: int
    r_pad: int
    split: int
    num_warps: int
    num_stages: int


def padded_rank(r: int) -> int:
    """``R_PAD``: the next power of two ≥ max(r, 16)."""
    return max(16, triton.next_power_of_2(r))


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_config(M: int, K: int, N: int, r: int, dtype: torch.dtype,
                  device: torch.device) -> ChainConfig:  # fmt: skip
    """Heuristic launch configuration for a shape (see ``benchmarks/NOTES.md``).

    Tiles shrink as the rank grows so the fp32 ``[BLOCK_M, R_PAD]`` accumulator fits in
    registers. The split over N is chosen so that ``row_blocks · split`` reaches about
    two programs per SM, capped at 8 so the recompute of Z stays bounded.
    """
    r_pad = padded_rank(r)
    if INTERPRETED:
        # The interpreter runs blocks as numpy arrays: small tiles keep CPU tests fast.
        block_m, block_n, block_k, warps, stages = 16, 32, 32, 1, 1
    elif r_pad <= 64:
        block_m, block_n, block_k, warps, stages = 128, 128, 64, 8, 3
    elif r_pad <= 128:
        block_m, block_n, block_k, warps, stages = 128, 128, 32, 8, 3
    elif r_pad <= 256:
        block_m, block_n, block_k, warps, stages = 64, 128, 32, 8, 3
    else:
        block_m, block_n, block_k, warps, stages = 32, 64, 32, 8, 2
    if dtype == torch.float32 and not INTERPRETED:
        block_k = max(16, block_k // 2)
        stages = min(stages, 2)
    if M <= 16 and not INTERPRETED:
        block_m = 16  # tl.dot's minimum: no wasted rows for decode-sized batches
    row_blocks = triton.cdiv(M, block_m)
    col_tiles = triton.cdiv(N, block_n)
    target_programs = 2 * _num_sms(device)
    split = 1
    if row_blocks < target_programs:
        split = max(1, min(col_tiles, target_programs // row_blocks, 8))
    if INTERPRETED and row_blocks == 1 and col_tiles > 1:
        split = 2  # exercise the small-M path in CPU tests
    return ChainConfig(block_m, block_n, block_k, r_pad, split, warps, stages)


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED:
        return "tf32"
    return "ieee"


def _interpreted_shape_propagation(a: torch.Tensor) -> bool:
    """True when fake tensors flow through the op under the interpreter.

    ``triton_op`` reuses the op body as its fake kernel; compiled kernels are captured
    by ``wrap_triton`` there, but interpreted ones would run on data-less tensors. Fake
    propagation needs only the output shapes, so the launch is skipped; functional
    tracing (``torch.compile`` inlining the kernel) cannot work and says so.
    """
    if not INTERPRETED:
        return False
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    if isinstance(a, FunctionalTensor):
        raise RuntimeError(
            "lowrank::triton_chain cannot be traced by torch.compile under TRITON_INTERPRET=1; "
            "call it eagerly, or use lowrank_kernels.lowrank_linear (compiled as one opaque op)"
        )
    return isinstance(a, FakeTensor)


@triton_op("lowrank::triton_chain", mutates_args={})
def triton_chain(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor | None,
    write_intermediate: bool,
    split: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a·b)·c + bias`` and ``a·b`` (``[0, r]`` unless ``write_intermediate``).

    Shapes ``a [M, K]``, ``b [K, r]``, ``c [r, N]``, ``bias [N]`` (any strides); ``split``
    ≥ 1 overrides the heuristic's split over N when > 0 (0 = heuristic).
    """
    M, K = a.shape
    r, N = c.shape
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    z = torch.empty((M, r) if write_intermediate else (0, r), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0 or _interpreted_shape_propagation(a):
        return out, z
    cfg = choose_config(M, K, N, r, a.dtype, a.device)
    grid = (triton.cdiv(M, cfg.block_m), split if split > 0 else cfg.split)
    z_strides = (z.stride(0), z.stride(1)) if write_intermediate else (0, 0)
    wrap_triton(_chain_kernel)[grid](
        a, b, c, bias if bias is not None else out, out, z,
        M, K, N, r,
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        c.stride(0), c.stride(1),
        out.stride(0), out.stride(1),
        *z_strides,
        HAS_BIAS=bias is not None,
        WRITE_Z=write_intermediate,
        ROUND_Z=a.dtype != torch.float32,
        INPUT_PRECISION=_input_precision(a.dtype),
        # The interpreter multiplies bf16 bit patterns as integers: upcast there (exact
        # products, fp32 accumulation — what the tensor cores compute on the GPU).
        DOT_IN_FP32=INTERPRETED and a.dtype == torch.bfloat16,
        MANUAL_BF16_ROUNDING=INTERPRETED and a.dtype == torch.bfloat16,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        R_PAD=cfg.r_pad,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, z


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def chain_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor | None,
    write_intermediate: bool,
    *,
    split: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Host entry of the fused chain: ``out [M, N]`` and the intermediate ``[M, r]`` or None.

    Operands must share one dtype among float16/bfloat16/float32 and one device.
    """
    if a.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"triton chain: a must be float16, bfloat16 or float32, got {a.dtype} "
            "(use the 'torch' backend for other dtypes)"
        )
    out, z = torch.ops.lowrank.triton_chain(a, b, c, bias, write_intermediate, split)
    return out, (z if write_intermediate else None)
