"""Ahead-of-time compile of the chain kernel's launch configurations for real GPUs.

Triton's compiler and its bundled ``ptxas``/``cuobjdump`` run on a machine without a GPU,
so what the interpreter cannot show — shared memory, registers, spills, which MMA
instructions were emitted — is checked here for sm_80 and sm_90 before any GPU time is
spent. Each call is specialised exactly as the JIT would specialise it on a GPU: the
launch arguments come from the launch code itself (:func:`chain.launch_arguments`, fed
meta tensors with the strides of the real call) and go through Triton's own argument
binder for the target.

This module must be imported in a process where ``TRITON_INTERPRET`` is unset (the
kernels must be JIT functions, not interpreted ones). Compiles are cached by Triton's
own cache (``TRITON_CACHE_DIR``), so a second run costs seconds.

Used by ``tests/test_kernel_resources.py`` (the CI gate) and
``benchmarks/kernel_resources.py`` (the table in ``benchmarks/NOTES.md``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import INTERPRETED
from .chain import (
    SMALL_M,
    ChainConfig,
    _chain_kernel,
    candidate_configs,
    chain_aligned,
    launch_arguments,
    split_for,
)

# Per-arch hardware limits (CUDA programming guide, compute capability tables).
SMEM_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}  # opt-in maximum per block
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SMEM_RESERVED_PER_BLOCK = 1024  # the driver keeps 1 KB per resident block
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp in units of 256
NUM_SMS = {80: 108, 90: 132}  # A100 and H100 SXM, for the split the host would choose

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
USES = ("forward", "dx")


@dataclass(frozen=True)
class Call:
    """One chain call as the op layer makes it.

    ``use="forward"``: ``x [M, K]·V [K, r]·U [r, N] + bias``, Z written (training).
    ``use="dx"``: ``dY [M, N]·Uᵀ·Vᵀ`` through transposed views (strides ``(1, N)`` and
    ``(1, K)``), no bias, dZ written. ``precision`` is ``"tf32"`` or ``"ieee"`` for fp32.
    """

    M: int
    K: int
    N: int
    r: int
    dtype: str
    use: str
    precision: str = "ieee"


@dataclass(frozen=True)
class Resources:
    """What one compiled kernel uses on one arch, and what follows from it."""

    arch: int
    call: Call
    config: ChainConfig
    z_on_chip: bool
    registers: int
    spill_bytes: int  # stack frame (spill stores and loads live there)
    local_bytes: int
    shared_bytes: int
    mma: str  # "wgmma", "mma" or "fma": the instructions the dots became
    blocks_per_sm: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= SMEM_PER_BLOCK[self.arch] and self.blocks_per_sm >= 1

    @property
    def spill_free(self) -> bool:
        return self.spill_bytes == 0 and self.local_bytes == 0

    @property
    def occupancy_warps(self) -> int:
        return self.blocks_per_sm * self.config.num_warps

    def row(self) -> dict[str, object]:
        return {
            "arch": f"sm_{self.arch}",
            **asdict(self.call),
            **{k: v for k, v in asdict(self.config).items()},
            "z_on_chip": self.z_on_chip,
            "registers": self.registers,
            "spill_bytes": self.spill_bytes,
            "local_bytes": self.local_bytes,
            "shared_bytes": self.shared_bytes,
            "mma": self.mma,
            "blocks_per_sm": self.blocks_per_sm,
            "occupancy_warps": self.occupancy_warps,
            "fits": self.fits,
            "spill_free": self.spill_free,
        }


def blocks_per_sm(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident blocks per SM allowed by registers, shared memory, warps and the block cap."""
    per_warp = -(-registers * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_regs = REGISTERS_PER_SM // max(per_warp * num_warps, 1)
    if shared_bytes > SMEM_PER_BLOCK[arch]:
        return 0
    by_smem = SMEM_PER_SM[arch] // (shared_bytes + SMEM_RESERVED_PER_BLOCK)
    return min(by_regs, by_smem, MAX_WARPS_PER_SM // num_warps, MAX_BLOCKS_PER_SM)


def _operands(call: Call) -> tuple[torch.Tensor, ...]:
    """Meta tensors with the shapes and strides of the call (no memory)."""
    dtype = DTYPES[call.dtype]
    meta = dict(dtype=dtype, device="meta")
    M, K, N, r = call.M, call.K, call.N, call.r
    if call.use == "forward":
        a = torch.empty(M, K, **meta)
        b = torch.empty(K, r, **meta)
        c = torch.empty(r, N, **meta)
        bias = torch.empty(N, **meta)
        out = torch.empty(M, N, **meta)
    elif call.use == "dx":
        a = torch.empty(M, N, **meta)  # dY
        b = torch.empty(r, N, **meta).t()  # Uᵀ
        c = torch.empty(K, r, **meta).t()  # Vᵀ
        bias = None
        out = torch.empty(M, K, **meta)
    else:
        raise ValueError(f"use must be one of {USES}, got {call.use!r}")
    return a, b, c, bias, out


def launches(call: Call, arch: int, configs: Iterable[ChainConfig] | None = None
             ) -> Iterator[tuple[ChainConfig, object]]:  # fmt: skip
    """Every launch the host may make for ``call`` on ``arch``: ``(config, Launch)``.

    ``configs`` replaces the kernel's own candidates (to explore new tiles).
    """
    a, b, c, bias, out = _operands(call)
    M, r = a.shape[0], c.shape[0]
    dtype = DTYPES[call.dtype]
    if configs is None:
        configs = candidate_configs(M, r, dtype, aligned=chain_aligned(a, b, c),
                                    interpreted=False)  # fmt: skip
    for config in configs:
        split = split_for(M, c.shape[1], config, NUM_SMS[arch], interpreted=False)
        on_chip = config.z_on_chip(r)
        z = torch.empty(M, r, dtype=dtype, device="meta")
        scratch_shape = (split - 1, M, r) if not on_chip and split > 1 else (0, 0, r)
        z_scratch = torch.empty(scratch_shape, dtype=dtype, device="meta")
        yield config, launch_arguments(
            a, b, c, bias, out, z, z_scratch, config, split, True,
            interpreted=False, input_precision=call.precision,
        )  # fmt: skip


def _specialize(launch, arch: int) -> tuple[dict, dict, dict, dict]:
    """``(signature, constexprs, attrs, options)`` exactly as the JIT computes them."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(_chain_kernel.signature, _chain_kernel.params, backend)
    kwargs = dict(launch.kwargs, debug=False)
    kwargs.setdefault("instrumentation_mode", "")
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = _chain_kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return (
        signature,
        constexprs,
        attrs,
        {k: getattr(options, k) for k in ("num_warps", "num_stages")},
    )


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _parse_resource_usage(text: str) -> dict[str, int]:
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    reg, stack, _static_shared, local = (int(g) for g in match.groups())
    return {"registers": reg, "spill_bytes": stack, "local_bytes": local}


def _mma_kind(sass: str) -> str:
    if "HGMMA" in sass:
        return "wgmma"
    if "HMMA" in sass:
        return "mma"
    return "fma"


def compile_launch(call: Call, config: ChainConfig, launch, arch: int) -> Resources:
    """Compile one launch for ``sm_<arch>`` and read its resources from the cubin."""
    if INTERPRETED:
        raise RuntimeError(
            "triton_ops.aot needs compiled kernels: run it with TRITON_INTERPRET unset"
        )
    signature, constexprs, attrs, options = _specialize(launch, arch)
    kernel = triton.compile(
        ASTSource(_chain_kernel, signature, constexprs, attrs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    parsed = _parse_resource_usage(usage)
    shared = int(kernel.metadata.shared)
    return Resources(
        arch=arch,
        call=call,
        config=config,
        z_on_chip=config.z_on_chip(call.r),
        shared_bytes=shared,
        mma=_mma_kind(sass),
        blocks_per_sm=blocks_per_sm(arch, parsed["registers"], shared, config.num_warps),
        **parsed,
    )


def specialization_key(call: Call, config: ChainConfig, launch, arch: int) -> str:
    """Two launches with the same key compile to the same binary."""
    signature, constexprs, attrs, options = _specialize(launch, arch)
    return repr((arch, sorted(signature.items()), sorted(constexprs.items(), key=str),
                 sorted(attrs.items(), key=str), sorted(options.items())))  # fmt: skip


def declared_calls(
    Ms: Iterable[int],
    KNs: Iterable[tuple[int, int]],
    ranks: Iterable[int],
    dtypes: Iterable[str] = tuple(DTYPES),
    uses: Iterable[str] = USES,
) -> list[Call]:
    """The grid of calls, fp32 in both precisions (``allow_tf32`` on and off)."""
    calls = []
    for dtype in dtypes:
        precisions = ("ieee", "tf32") if dtype == "fp32" else ("ieee",)
        for M in Ms:
            for K, N in KNs:
                for r in ranks:
                    if r > min(K, N):
                        continue
                    for use in uses:
                        for precision in precisions:
                            calls.append(Call(M, K, N, r, dtype, use, precision))
    return calls


# The CI grid, in two parts. Main: both M classes, K and N divisible by 16, ranks that
# reach every rank chunk of the tile table both on chip and through memory, every dtype
# and fp32 precision, both uses. Odd: K, N and r not divisible by 16 (no vectorized
# loads, unaligned strides: the unaligned tile table, every chunk of it) for one 16-bit
# dtype and fp32.
CI_GRID = (
    dict(Ms=(SMALL_M, 4096), KNs=((4096, 4096),), ranks=(16, 32, 64, 128, 192, 256, 1024)),
    dict(
        Ms=(SMALL_M, 4096),
        KNs=((1000, 3000),),
        ranks=(8, 24, 60, 100, 120, 250, 1000),
        dtypes=("bf16", "fp32"),
    ),
)


def _compile_job(job: tuple[Call, ChainConfig, int]) -> Resources:
    call, config, arch = job
    ((_, launch),) = launches(call, arch, [config])
    return compile_launch(call, config, launch, arch)


def compile_all(calls: Iterable[Call], archs: Iterable[int], workers: int | None = None,
                configs: Iterable[ChainConfig] | None = None) -> list[Resources]:  # fmt: skip
    """Compile every distinct launch of ``calls`` for each arch (deduplicated by
    specialization), ``workers`` processes at a time; one :class:`Resources` per binary.
    ``configs`` replaces the kernel's candidates (exploration)."""
    configs = list(configs) if configs is not None else None
    jobs: dict[str, tuple[Call, ChainConfig, int]] = {}
    for arch in archs:
        for call in calls:
            for config, launch in launches(call, arch, configs):
                jobs.setdefault(specialization_key(call, config, launch, arch),
                                (call, config, arch))  # fmt: skip
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [_compile_job(job) for job in jobs.values()]
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, jobs.values(), chunksize=4))
