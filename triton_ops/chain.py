"""Fused rank-r chain ``out = (A·B)·C + bias`` — the one kernel behind forward and dX.

Layering, bottom up: the private ``@triton.jit`` ``_chain_kernel`` → its launch, the op
``lowrank::triton_chain`` (``torch.library.triton_op``: config, buffers, grid, launch)
→ the host entry ``chain_forward`` (dtype check, calls the op) → the triton backend in
``lowrank_kernels.ops.backends`` (per-shape configuration choice).

Kernel v2. Each program owns a block of ``BLOCK_M`` rows of A and computes that block's
intermediate ``Z = A·B`` in rank chunks of ``BLOCK_R`` columns (fp32 accumulate):

* ``r ≤ BLOCK_R`` (``Z_ON_CHIP``): the whole ``[BLOCK_M, BLOCK_R]`` Z stays in registers
  and the program loops over its output column tiles writing ``Z·C + bias``;
* ``r > BLOCK_R``: each chunk of Z is stored to memory as soon as it is complete (the
  returned intermediate, or a scratch slice), and every output tile then accumulates
  ``Σ_chunks Z_chunk·C_chunk``, re-reading the program's own Z rows from L2. Registers
  hold one chunk, so every rank launches without spilling, and the rank is padded to
  whole chunks (r = 192 runs as 3×64), not to the next power of two.

Z is never recomputed within a row block (the fusion trap of the design notes). When
``M / BLOCK_M`` programs cannot fill the GPU, the host raises ``SPLIT`` (grid axis 1):
each of the SPLIT programs of a row block recomputes Z — a bounded ``SPLIT``-fold
recompute of the cheap ``M·K·r`` half — and writes every SPLIT-th column tile.

Numerics: fp32 accumulation in both products. For fp16/bf16 inputs Z is rounded to
the input dtype before the second product, exactly where the PyTorch chain rounds
it; for fp32 inputs Z stays fp32 (the chain would round to fp32 too, a no-op).
fp32 products use TF32 tensor cores iff ``torch.backends.cuda.matmul.allow_tf32``.
Padded rank lanes are exact zeros even when A holds an inf, so a non-finite input only
reaches the outputs the reference chain also makes non-finite. Under the Triton
interpreter bf16 operands are upcast to fp32 before ``tl.dot`` (the interpreter's bf16
dot is wrong) and fp32 → bf16 rounding is done by hand (its cast truncates); products
of bf16 values are exact in fp32, so both match what the tensor cores compute on the GPU.

Every operand (bias included) is read through its strides; all row/column offsets are
int64, so M·K ≥ 2³¹ is safe. The launch configurations the host may choose are
enumerated by :func:`candidate_configs`; ``tests/test_kernel_resources.py`` compiles
every one of them for sm_80 and sm_90 and holds it to zero spills and the arch's
shared memory.
"""

from __future__ import annotations

from collections.abc import Iterable
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
def _z_chunk(
    a_rows, row_mask, b_ptr, K, R, r0,
    stride_ak, stride_bk, stride_br,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    """fp32 ``Z[rows, r0 : r0 + BLOCK_R] = A[rows, :]·B[:, r0 : r0 + BLOCK_R]``.

    Lanes at ranks ≥ R are exact zeros: B's padded columns load as zero, but an inf in A
    would make them inf·0 = NaN, and the second product multiplies them by C's zero
    padded rows, which would turn a whole output row into NaN.
    """
    ranks = r0 + tl.arange(0, BLOCK_R)
    rank_mask = ranks < R
    ks = tl.arange(0, BLOCK_K)
    z = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
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
    return tl.where(rank_mask[None, :], z, 0.0)


@triton.jit
def _mma(z, c, acc, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """``acc + z·c`` in fp32; ``z`` already rounded to c's dtype where the chain rounds it."""
    if DOT_IN_FP32:
        return tl.dot(z.to(tl.float32), c.to(tl.float32), acc, input_precision=INPUT_PRECISION)
    else:
        return tl.dot(z.to(c.dtype), c, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _store_output(
    acc, rows, row_mask, cols, col_mask, bias_ptr, stride_bias, out_ptr, stride_om, stride_on,
    HAS_BIAS: tl.constexpr,
    MANUAL_BF16_ROUNDING: tl.constexpr,
):  # fmt: skip
    """``out[rows, cols] = acc + bias[cols]``, rounded once to out's dtype."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias, mask=col_mask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
             _downcast(acc, out_ptr.dtype.element_ty, MANUAL_BF16_ROUNDING),
             mask=row_mask[:, None] & col_mask[None, :])  # fmt: skip


@triton.jit
def _chain_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, out_ptr, z_ptr, z_scratch_ptr,
    M, K, N, R,
    stride_am, stride_ak,
    stride_bk, stride_br,
    stride_cr, stride_cn,
    stride_bias,
    stride_om, stride_on,
    stride_zs, stride_zm, stride_zr,
    HAS_BIAS: tl.constexpr,
    WRITE_Z: tl.constexpr,
    ROUND_Z: tl.constexpr,
    Z_ON_CHIP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    MANUAL_BF16_ROUNDING: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_split = tl.program_id(1)
    split = tl.num_programs(1)

    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    a_rows = a_ptr + rows[:, None] * stride_am
    cols_in_tile = tl.arange(0, BLOCK_N)
    chunk = tl.arange(0, BLOCK_R)

    if Z_ON_CHIP:
        # R ≤ BLOCK_R: the row block's whole Z stays in registers (fp32 accumulate).
        z = _z_chunk(a_rows, row_mask, b_ptr, K, R, 0, stride_ak, stride_bk, stride_br,
                     INPUT_PRECISION, DOT_IN_FP32, BLOCK_M, BLOCK_K, BLOCK_R)  # fmt: skip
        z_in = _downcast(z, z_ptr.dtype.element_ty, MANUAL_BF16_ROUNDING)
        if WRITE_Z:  # noqa: SIM102 (constexpr branch, then a runtime one)
            if pid_split == 0:
                tl.store(
                    z_ptr + rows[:, None] * stride_zm + chunk[None, :] * stride_zr,
                    z_in,
                    mask=row_mask[:, None] & (chunk < R)[None, :],
                )
        if ROUND_Z:
            z = z_in
        for n0 in range(pid_split * BLOCK_N, N, split * BLOCK_N):
            cols = (n0 + cols_in_tile).to(tl.int64)
            col_mask = cols < N
            c = tl.load(
                c_ptr + chunk[:, None] * stride_cr + cols[None, :] * stride_cn,
                mask=(chunk < R)[:, None] & col_mask[None, :],
                other=0.0,
            )
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc = _mma(z, c, acc, INPUT_PRECISION, DOT_IN_FP32)
            _store_output(acc, rows, row_mask, cols, col_mask, bias_ptr, stride_bias, out_ptr,
                          stride_om, stride_on, HAS_BIAS, MANUAL_BF16_ROUNDING)  # fmt: skip
    else:
        # R > BLOCK_R: Z goes through memory one BLOCK_R chunk at a time, so registers hold
        # one chunk and any rank runs; the program that wrote its rows re-reads them (from
        # L2). Split 0 uses the returned intermediate, the other splits of the row block
        # their own scratch slice (they compute the same values; no two programs share one).
        if pid_split == 0:
            z_base = z_ptr
        else:
            z_base = z_scratch_ptr + (pid_split - 1).to(tl.int64) * stride_zs
        z_rows = z_base + rows[:, None] * stride_zm
        for r0 in range(0, R, BLOCK_R):
            z = _z_chunk(a_rows, row_mask, b_ptr, K, R, r0, stride_ak, stride_bk, stride_br,
                         INPUT_PRECISION, DOT_IN_FP32, BLOCK_M, BLOCK_K, BLOCK_R)  # fmt: skip
            ranks = r0 + chunk
            tl.store(
                z_rows + ranks[None, :] * stride_zr,
                _downcast(z, z_ptr.dtype.element_ty, MANUAL_BF16_ROUNDING),
                mask=row_mask[:, None] & (ranks < R)[None, :],
            )
        # Every thread's Z stores are visible to the whole program past this barrier.
        tl.debug_barrier()
        for n0 in range(pid_split * BLOCK_N, N, split * BLOCK_N):
            cols = (n0 + cols_in_tile).to(tl.int64)
            col_mask = cols < N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for r0 in range(0, R, BLOCK_R):
                ranks = r0 + chunk
                rank_mask = ranks < R
                z = tl.load(
                    z_rows + ranks[None, :] * stride_zr,
                    mask=row_mask[:, None] & rank_mask[None, :],
                    other=0.0,
                )
                c = tl.load(
                    c_ptr + ranks[:, None] * stride_cr + cols[None, :] * stride_cn,
                    mask=rank_mask[:, None] & col_mask[None, :],
                    other=0.0,
                )
                acc = _mma(z, c, acc, INPUT_PRECISION, DOT_IN_FP32)
            _store_output(acc, rows, row_mask, cols, col_mask, bias_ptr, stride_bias, out_ptr,
                          stride_om, stride_on, HAS_BIAS, MANUAL_BF16_ROUNDING)  # fmt: skip


RANK_GRANULE = 16
"""Finest rank chunk: ``tl.dot`` needs K ≥ 16 for 16-bit operands (the MMA k-step)."""

MAX_RANK_PADDING = 1.25
"""A rank chunk is allowed when it pads r to at most this factor (or to no more than the
granule does): r = 192 runs as 3×64, r = 320 as 5×64, never as the next power of two."""

RANK_CHUNKS_TRIED = 2
"""Candidates use the two largest allowed rank chunks: fewer, wider chunks mean fewer
passes over A's row block; more would only lengthen the measurement on a GPU."""

SMALL_M = 16
"""Row counts up to this use the small-M tiles (``BLOCK_M = 16``, tl.dot's minimum)."""

MAX_SPLIT = 8
"""Cap on programs per row block (each recomputes the row block's Z)."""


@dataclass(frozen=True)
class ChainConfig:
    """Tile sizes and launch options of one ``_chain_kernel`` launch.

    ``block_r`` is the rank chunk: for ``r ≤ block_r`` the row block's Z stays in registers
    (``Z_ON_CHIP``), otherwise it is computed and consumed in ``block_r``-wide chunks
    through memory.
    """

    block_m: int
    block_n: int
    block_k: int
    block_r: int
    num_warps: int
    num_stages: int

    def z_on_chip(self, r: int) -> bool:
        return r <= self.block_r

    def padded_rank(self, r: int) -> int:
        """The rank the kernel computes with: r rounded up to whole chunks."""
        return triton.cdiv(r, self.block_r) * self.block_r

    def as_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_k, self.block_r, self.num_warps,
                self.num_stages]  # fmt: skip

    @classmethod
    def from_list(cls, values: list[int]) -> ChainConfig:
        if len(values) != 6 or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(
                "triton chain: config must be 6 positive ints [block_m, block_n, block_k, "
                f"block_r, num_warps, num_stages], got {values!r}"
            )
        return cls(*values)


# Tiles per Z path, (operand family, M class) and rank chunk, best first. Entries are
# (block_m, block_n, block_k, num_warps, num_stages). Every entry is compiled for sm_80
# and sm_90 by tests/test_kernel_resources.py, in both uses (forward and dX) and every
# dtype of its family: spill-free and within each arch's shared memory. The chunked path
# holds one Z chunk and streams the others through memory, and its wide chunks spill
# (the Z chunk and the C chunk both live in registers in stage 2), so it stops at 64
# (16-bit) and 32 (fp32, whose ieee dots run on FMAs with operands in registers).
Tiles = dict[tuple[str, str], dict[int, tuple[tuple[int, int, int, int, int], ...]]]
_ON_CHIP_TILES: Tiles = {
    ("16bit", "large"): {
        256: ((64, 64, 64, 8, 3), (64, 128, 64, 8, 2)),
        128: ((128, 64, 64, 8, 3), (128, 128, 64, 8, 2)),
        64: ((128, 64, 64, 8, 3), (128, 128, 64, 8, 3)),
        32: ((128, 64, 64, 8, 3),),
        16: ((128, 128, 64, 8, 3),),
    },
    ("16bit", "small"): {
        256: ((16, 64, 64, 4, 2),),
        128: ((16, 64, 64, 4, 2),),
        64: ((16, 128, 128, 4, 3),),
        32: ((16, 128, 128, 4, 3),),
        16: ((16, 128, 64, 4, 4),),
    },
    ("fp32", "large"): {
        64: ((64, 64, 16, 8, 2),),
        32: ((64, 64, 16, 8, 2), (32, 32, 32, 4, 2)),
        16: ((64, 64, 16, 8, 2), (32, 32, 32, 4, 2)),
    },
    ("fp32", "small"): {
        64: ((16, 64, 16, 4, 2),),
        32: ((16, 64, 16, 4, 2),),
        16: ((16, 64, 16, 4, 2),),
    },
}
_CHUNKED_TILES: Tiles = {
    ("16bit", "large"): {
        64: ((128, 64, 64, 8, 3), (128, 128, 64, 8, 3)),
        32: ((128, 64, 64, 8, 3),),
        16: ((128, 64, 64, 8, 3),),
    },
    ("16bit", "small"): {
        64: ((16, 128, 128, 4, 3),),
        32: ((16, 128, 128, 4, 3),),
        16: ((16, 128, 64, 4, 4),),
    },
    ("fp32", "large"): {
        32: ((64, 64, 16, 8, 2), (32, 32, 32, 4, 2)),
        16: ((64, 64, 16, 8, 2), (32, 32, 32, 4, 2)),
    },
    ("fp32", "small"): {
        32: ((16, 64, 16, 4, 2),),
        16: ((16, 64, 16, 4, 2),),
    },
}
# Operands whose sizes or strides are not multiples of 16 elements get no vectorized or
# asynchronous loads: every element carries its own 64-bit address and mask, and wide
# tiles spill. They use these narrower tiles and rank chunks (on chip up to 64 for
# 16-bit and 32 for fp32; through memory up to 32), also verified by
# tests/test_kernel_resources.py.
_UNALIGNED_TILES: Tiles = {
    ("16bit", "large"): {c: ((128, 64, 64, 8, 2),) for c in (16, 32, 64)},
    ("16bit", "small"): {c: ((16, 64, 64, 4, 2),) for c in (16, 32, 64)},
    ("fp32", "large"): {c: ((32, 32, 32, 4, 1),) for c in (16, 32)},
    ("fp32", "small"): {c: ((16, 64, 16, 4, 1),) for c in (16, 32)},
}
UNALIGNED_MAX_CHUNK = 32

# The interpreter runs blocks as numpy arrays: small tiles keep CPU tests fast, and a
# 32-wide rank chunk exercises both Z paths (r ≤ 32 on chip, r > 32 through memory).
_INTERPRETER_CONFIG = ChainConfig(16, 32, 32, 32, 1, 1)


def rank_chunks(r: int, choices: Iterable[int]) -> tuple[int, ...]:
    """The rank chunks (``block_r``) among ``choices`` allowed for rank ``r``, largest first.

    Allowed: padding r to whole chunks costs at most ``MAX_RANK_PADDING``× r, or no more
    than the finest chunk (``RANK_GRANULE``) costs anyway.
    """
    floor = triton.cdiv(r, RANK_GRANULE) * RANK_GRANULE
    limit = max(MAX_RANK_PADDING * r, floor)
    return tuple(sorted((c for c in choices if triton.cdiv(r, c) * c <= limit), reverse=True))


def operand_family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def operands_aligned(*tensors: torch.Tensor) -> bool:
    """Whether every size and non-unit stride of the operands is a multiple of 16 elements
    and every base address of 16 bytes — what Triton specializes loads on."""
    for t in tensors:
        if t.data_ptr() % 16:
            return False
        for size, stride in zip(t.shape, t.stride(), strict=True):
            if size % 16 or (stride != 1 and stride % 16):
                return False
    return True


def chain_aligned(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> bool:
    """:func:`operands_aligned` for a chain call; A's row count M is exempt (it only
    enters masks). The outputs are allocated contiguous with rows of N and r elements,
    which the checks of ``b`` and ``c`` cover."""
    if a.data_ptr() % 16 or a.shape[1] % 16 or any(s != 1 and s % 16 for s in a.stride()):
        return False
    return operands_aligned(b, c)


def candidate_configs(M: int, r: int, dtype: torch.dtype, *, aligned: bool = True,
                      interpreted: bool = INTERPRETED) -> tuple[ChainConfig, ...]:  # fmt: skip
    """Every launch configuration the kernel may use for ``M`` rows at rank ``r``, best first.

    ``aligned``: see :func:`operands_aligned` (the A operand's rows excepted: M only
    enters masks). On a GPU the choice among them is measured per shape (see the triton
    backend); the first is the default when nothing was measured.
    """
    if interpreted:
        return (_INTERPRETER_CONFIG,)
    table = (operand_family(dtype), "small" if M <= SMALL_M else "large")
    if aligned:
        on_chip, chunked = _ON_CHIP_TILES[table], _CHUNKED_TILES[table]
    else:
        on_chip = _UNALIGNED_TILES[table]
        chunked = {c: t for c, t in on_chip.items() if c <= UNALIGNED_MAX_CHUNK}
    # A chunk ≥ r keeps Z on chip; a smaller one streams it through memory.
    choices = [c for c in on_chip if c >= r] + [c for c in chunked if c < r]
    return tuple(
        ChainConfig(bm, bn, bk, block_r, warps, stages)
        for block_r in rank_chunks(r, choices)[:RANK_CHUNKS_TRIED]
        for bm, bn, bk, warps, stages in (on_chip if block_r >= r else chunked)[block_r]
    )


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_for(M: int, N: int, config: ChainConfig, num_sms: int, *,
              interpreted: bool = INTERPRETED) -> int:  # fmt: skip
    """Programs per row block: enough for ``row_blocks · split`` ≈ two programs per SM,
    at most one per output column tile and at most ``MAX_SPLIT`` (each recomputes Z)."""
    row_blocks = triton.cdiv(M, config.block_m)
    col_tiles = triton.cdiv(N, config.block_n)
    if interpreted:
        return 2 if row_blocks == 1 and col_tiles > 1 else 1  # exercise the small-M path
    target_programs = 2 * num_sms
    if row_blocks >= target_programs:
        return 1
    return max(1, min(col_tiles, target_programs // row_blocks, MAX_SPLIT))


def _input_precision(dtype: torch.dtype, interpreted: bool) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreted:
        return "tf32"
    return "ieee"


@dataclass(frozen=True)
class Launch:
    """Everything one kernel launch passes: grid, positional arguments, keyword options."""

    grid: tuple[int, int]
    args: tuple
    kwargs: dict


def launch_arguments(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    z: torch.Tensor,
    z_scratch: torch.Tensor,
    config: ChainConfig,
    split: int,
    write_intermediate: bool,
    *,
    interpreted: bool = INTERPRETED,
    input_precision: str | None = None,
) -> Launch:
    """The arguments of ``_chain_kernel`` for one call (shared by the launch and by the
    ahead-of-time compile in ``triton_ops/aot.py``, which passes meta tensors).

    ``z`` is the ``[M, r]`` intermediate (``[0, r]`` when neither written nor needed),
    ``z_scratch`` ``[split - 1, M, r]`` for the other splits of the chunked path.
    """
    M, K = a.shape
    r, N = c.shape
    on_chip = config.z_on_chip(r)
    return Launch(
        grid=(triton.cdiv(M, config.block_m), split),
        args=(
            a,
            b,
            c,
            bias if bias is not None else out,
            out,
            z,
            z_scratch,
            M,
            K,
            N,
            r,
            a.stride(0),
            a.stride(1),
            b.stride(0),
            b.stride(1),
            c.stride(0),
            c.stride(1),
            bias.stride(0) if bias is not None else 0,
            out.stride(0),
            out.stride(1),
            z_scratch.stride(0),
            z.stride(0),
            z.stride(1),
        ),
        kwargs=dict(
            HAS_BIAS=bias is not None,
            WRITE_Z=write_intermediate,
            ROUND_Z=a.dtype != torch.float32,
            Z_ON_CHIP=on_chip,
            INPUT_PRECISION=input_precision or _input_precision(a.dtype, interpreted),
            # The interpreter multiplies bf16 bit patterns as integers: upcast there (exact
            # products, fp32 accumulation — what the tensor cores compute on the GPU).
            DOT_IN_FP32=interpreted and a.dtype == torch.bfloat16,
            MANUAL_BF16_ROUNDING=interpreted and a.dtype == torch.bfloat16,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_K=config.block_k,
            BLOCK_R=config.block_r,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        ),
    )


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
    config: list[int],
    split: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a·b)·c + bias`` and ``a·b`` (``[0, r]`` unless ``write_intermediate``).

    Shapes ``a [M, K]``, ``b [K, r]``, ``c [r, N]``, ``bias [N]`` (any strides). ``config``
    is ``ChainConfig.as_list()`` or ``[]`` for the default; ``split`` > 0 overrides the
    programs per row block (0 = ``split_for``).
    """
    M = a.shape[0]
    r, N = c.shape
    cfg = (
        ChainConfig.from_list(config)
        if config
        else candidate_configs(M, r, a.dtype, aligned=chain_aligned(a, b, c))[0]
    )
    on_chip = cfg.z_on_chip(r)
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    z = torch.empty(
        (M, r) if write_intermediate or not on_chip else (0, r), dtype=a.dtype, device=a.device
    )
    if M == 0 or N == 0 or _interpreted_shape_propagation(a):
        return out, z if write_intermediate else z.new_empty((0, r))
    split = split if split > 0 else split_for(M, N, cfg, _num_sms(a.device))
    z_scratch = torch.empty(
        (split - 1, M, r) if not on_chip and split > 1 else (0, 0, r),
        dtype=a.dtype,
        device=a.device,
    )
    launch = launch_arguments(a, b, c, bias, out, z, z_scratch, cfg, split, write_intermediate)
    wrap_triton(_chain_kernel)[launch.grid](*launch.args, **launch.kwargs)
    return out, z if write_intermediate else z.new_empty((0, r))


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def chain_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor | None,
    write_intermediate: bool,
    *,
    config: ChainConfig | None = None,
    split: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Host entry of the fused chain: ``out [M, N]`` and the intermediate ``[M, r]`` or None.

    Operands must share one dtype among float16/bfloat16/float32 and one device.
    ``config`` (one of :func:`candidate_configs`, default its first) and ``split`` (default
    :func:`split_for`) pin the launch.
    """
    if a.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"triton chain: a must be float16, bfloat16 or float32, got {a.dtype} "
            "(use the 'torch' backend for other dtypes)"
        )
    cfg = config.as_list() if config is not None else []
    out, z = torch.ops.lowrank.triton_chain(a, b, c, bias, write_intermediate, cfg, split)
    return out, (z if write_intermediate else None)
