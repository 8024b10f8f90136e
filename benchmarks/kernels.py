"""Kernel microbenchmarks: the low-rank op against every baseline and the roofline.

Providers: ``triton`` (fused), ``cuda`` (if built), ``torch_chain`` (``(x@V)@U + b``
in eager PyTorch), ``torch_compile`` (that chain under ``torch.compile``), ``dense``
(``F.linear`` K→N, the layer a user replaces). Modes: ``fwd``, ``bwd``, ``fwdbwd``.

Per row: median and 20th/80th percentile time, TFLOP/s by the FLOP formula of docs/design.md,
the roofline floor ``max(FLOPs / matmul peak, bytes / copy bandwidth)`` with both
ceilings measured in the same run, the fraction of that floor achieved, and peak
memory. Rows are appended to ``benchmarks/results/<device name>/kernels.csv`` with
provenance columns (device, torch, triton, CUDA, package version, git commit,
timestamp, command).

GPU timing uses ``triton.testing.do_bench`` (it clears L2 between runs, so nothing is
served from cache by accident). ``--device cpu`` runs a small grid with a
``perf_counter`` timer — CPU figures, labelled as such.

Examples::

    python benchmarks/kernels.py --grid headline        # the bf16 headline table
    python benchmarks/kernels.py --grid full            # the whole grid (long)
    python benchmarks/kernels.py --device cpu --grid cpu
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import itertools
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch._functorch.config as functorch_config
import torch.nn.functional as F

import lowrank_kernels as lrk

ROOT = Path(__file__).resolve().parent
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROVIDERS = ("triton", "cuda", "torch_chain", "torch_compile", "dense")
MODES = ("fwd", "bwd", "fwdbwd")

GRIDS: dict[str, dict[str, list]] = {
    # the headline table: bf16, K = N = 4096
    "headline": {"M": [16, 1024, 8192], "KN": [(4096, 4096)], "r": [64, 256], "dtype": ["bf16"]},
    # the whole grid (bf16 everywhere; fp16/fp32 on the subset below)
    "full": {
        "M": [1, 16, 128, 1024, 4096, 16384],
        "KN": [(1024, 1024), (4096, 4096), (4096, 11008), (8192, 8192)],
        "r": [32, 64, 128, 256, 512],
        "dtype": ["bf16"],
    },
    "subset": {"M": [16, 4096], "KN": [(4096, 4096)], "r": [64, 256], "dtype": ["fp16", "fp32"]},
    "cpu": {"M": [1, 64, 512], "KN": [(256, 256), (512, 1024)], "r": [16, 64], "dtype": ["fp32"]},
    "tiny": {"M": [4], "KN": [(32, 48)], "r": [8], "dtype": ["fp32"]},
}

CSV_FIELDS = [
    "provider", "mode", "dtype", "M", "K", "N", "r",
    "median_ms", "p20_ms", "p80_ms", "tflops", "floor_ms", "roofline_fraction", "peak_mem_mb",
    "matmul_peak_tflops", "copy_gbps",
    "device_name", "device_kind", "torch", "triton", "cuda", "package_version", "git_commit",
    "timestamp", "command",
]  # fmt: skip


@dataclass(frozen=True)
class Ceilings:
    """Measured matmul peak and copy bandwidth of the device."""

    matmul_tflops: float
    copy_gbps: float


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


# ----------------------------------------------------------------------------- timing


def time_fn(fn: Callable[[], object], device: torch.device, grad_to_none=None) -> Timing:
    """Median and 20th/80th percentile milliseconds of ``fn``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        p50, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
        return Timing(p50, p20, p80)
    fn()  # warm-up
    times = []
    budget_end = time.perf_counter() + 0.5
    while len(times) < 5 or (time.perf_counter() < budget_end and len(times) < 50):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10)
    return Timing(statistics.median(times), q[1], q[7])


def measure_ceilings(device: torch.device) -> Ceilings:
    """Matmul peak (bf16 on GPU, fp32 on CPU) and copy bandwidth, measured now."""
    if device.type == "cuda":
        n, dtype, copy_bytes = 8192, torch.bfloat16, 1 << 30
    else:
        n, dtype, copy_bytes = 1024, torch.float32, 1 << 27
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t_mm = time_fn(lambda: a @ b, device).median_ms
    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    t_copy = time_fn(lambda: dst.copy_(src), device).median_ms
    return Ceilings(2 * n**3 / t_mm / 1e9, 2 * copy_bytes / t_copy / 1e6)


# ----------------------------------------------------------------------------- model


def flops(provider: str, mode: str, M: int, K: int, N: int, r: int) -> float:
    """docs/design.md: low-rank forward ``2·M·r·(K+N)``, backward twice that; dense ``2·M·K·N``."""
    fwd = 2 * M * K * N if provider == "dense" else 2 * M * r * (K + N)
    return {"fwd": fwd, "bwd": 2 * fwd, "fwdbwd": 3 * fwd}[mode]


def min_bytes(provider: str, mode: str, M: int, K: int, N: int, r: int, elt: int) -> float:
    """Compulsory traffic: every operand read once, every result written once."""
    weights = K * N if provider == "dense" else r * (K + N)
    saved_z = 0 if provider == "dense" else M * r
    fwd = M * K + weights + N + M * N
    # backward reads dY, x, the weights (and Z), writes dx, the weight grads and db
    bwd = M * N + M * K + weights + saved_z + M * K + weights + N
    return elt * {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


# ----------------------------------------------------------------------------- providers


def make_callable(provider: str, mode: str, x, V, U, b, dy) -> tuple[Callable[[], object], list]:
    """The closure to time and the tensors whose ``.grad`` must be reset between runs."""
    leaves = [x, V, U, b]
    if provider in ("triton", "cuda"):
        lrk.set_backend(provider)
        fwd = lambda: lrk.lowrank_linear(x, V, U, b)
    elif provider == "torch_chain":
        fwd = lambda: torch.addmm(b, x @ V, U)
    elif provider == "torch_compile":
        # "bwd" replays one graph's backward (retain_graph=True), which donated buffers forbid
        functorch_config.donated_buffer = False
        compiled = torch.compile(lambda x, V, U, b: (x @ V) @ U + b, fullgraph=True)
        fwd = lambda: compiled(x, V, U, b)
    elif provider == "dense":
        W = (V @ U).t().contiguous().detach().requires_grad_()
        leaves = [x, W, b]
        fwd = lambda: F.linear(x, W, b)
    else:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")

    if mode == "fwd":
        return (lambda: fwd()), []
    if mode == "fwdbwd":
        return (lambda: fwd().backward(dy)), leaves
    y = fwd()
    return (lambda: y.backward(dy, retain_graph=True)), leaves


def provider_available(provider: str, device: torch.device) -> bool:
    from lowrank_kernels.ops.backends import BACKENDS

    if provider in ("triton", "cuda"):
        if device.type != "cuda":
            return False  # the interpreter is a correctness tool, not a benchmark target
        return BACKENDS[provider].unsupported_reason(device) is None
    return True


# ----------------------------------------------------------------------------- provenance


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def results_dir(name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_")
    return ROOT / "results" / safe


def provenance(device: torch.device) -> dict[str, str]:
    triton_version = "n/a"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                         timeout=10).stdout.strip()  # fmt: skip
        commit = git("rev-parse", "--short", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"  # the figures are not from exactly this commit
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "device_name": device_name(device),
        "device_kind": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "package_version": lrk.__version__,
        "git_commit": commit or "unknown",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


# ----------------------------------------------------------------------------- main loop


def shapes(grid: dict[str, list]) -> Iterable[tuple[str, int, int, int, int]]:
    for dtype, M, (K, N), r in itertools.product(grid["dtype"], grid["M"], grid["KN"], grid["r"]):
        if r <= min(K, N):
            yield dtype, M, K, N, r


def _sig(value: float) -> float:
    """Four significant digits: enough for timings, readable in the CSV."""
    return float(f"{value:.4g}")


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    device = torch.device(args.device)
    grid = GRIDS[args.grid]
    ceilings = measure_ceilings(device)
    meta = provenance(device)
    print(
        f"# {meta['device_name']}: matmul peak {ceilings.matmul_tflops:.1f} TFLOP/s, "
        f"copy {ceilings.copy_gbps:.0f} GB/s ({'CPU figures' if device.type == 'cpu' else 'GPU'})"
    )
    rows = []
    previous_backend = lrk.get_backend()
    try:
        for dtype_name, M, K, N, r in shapes(grid):
            dtype = DTYPES[dtype_name]
            gen = torch.Generator(device=device).manual_seed(M * 7 + K * 5 + N * 3 + r)
            x = torch.randn(M, K, device=device, dtype=dtype, generator=gen).requires_grad_()
            V = (
                torch.randn(K, r, device=device, dtype=dtype, generator=gen) / K**0.5
            ).requires_grad_()
            U = (
                torch.randn(r, N, device=device, dtype=dtype, generator=gen) / r**0.5
            ).requires_grad_()
            b = torch.randn(N, device=device, dtype=dtype, generator=gen).requires_grad_()
            dy = torch.randn(M, N, device=device, dtype=dtype, generator=gen)
            for provider, mode in itertools.product(args.providers, args.modes):
                if not provider_available(provider, device):
                    continue
                fn, leaves = make_callable(provider, mode, x, V, U, b, dy)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                timing = time_fn(fn, device, grad_to_none=leaves or None)
                peak_mb = (
                    (torch.cuda.max_memory_allocated(device) - base) / 2**20
                    if device.type == "cuda"
                    else float("nan")
                )
                fl = flops(provider, mode, M, K, N, r)
                by = min_bytes(provider, mode, M, K, N, r, dtype.itemsize)
                floor_ms = max(fl / (ceilings.matmul_tflops * 1e9), by / (ceilings.copy_gbps * 1e6))
                row = {
                    "provider": provider, "mode": mode, "dtype": dtype_name,
                    "M": M, "K": K, "N": N, "r": r,
                    **{k: _sig(v) for k, v in asdict(timing).items()},
                    "tflops": _sig(fl / timing.median_ms / 1e9),
                    "floor_ms": _sig(floor_ms),
                    "roofline_fraction": _sig(floor_ms / timing.median_ms),
                    "peak_mem_mb": _sig(peak_mb),
                    "matmul_peak_tflops": _sig(ceilings.matmul_tflops),
                    "copy_gbps": _sig(ceilings.copy_gbps),
                    **meta,
                }  # fmt: skip
                rows.append(row)
                print(
                    f"{provider:>13} {mode:>6} {dtype_name} M={M:<6} K={K:<5} N={N:<5} r={r:<4}"
                    f" {timing.median_ms:9.4f} ms  {row['tflops']:8.2f} TFLOP/s"
                    f"  {100 * row['roofline_fraction']:5.1f}% of floor"
                )
    finally:
        lrk.set_backend(previous_backend)
    write_rows(
        rows, Path(args.out) if args.out else results_dir(meta["device_name"]) / "kernels.csv"
    )
    return rows


def predict(args: argparse.Namespace) -> None:
    """Print each shape's roofline floor for given ceilings, running nothing (for NOTES.md)."""
    ceilings = Ceilings(args.peak_tflops, args.peak_gbps)
    print(
        f"# floors for {ceilings.matmul_tflops} TFLOP/s, {ceilings.copy_gbps} GB/s "
        f"(given, not measured); command: {shlex.join([Path(sys.executable).name, *sys.argv])}"
    )
    print("| provider | mode | dtype | M | K | N | r | GFLOP | MB | FLOP/B | floor µs | bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name, M, K, N, r in shapes(GRIDS[args.grid]):
        for provider, mode in itertools.product(("triton", "dense"), args.modes):
            fl = flops(provider, mode, M, K, N, r)
            by = min_bytes(provider, mode, M, K, N, r, DTYPES[dtype_name].itemsize)
            t_compute = fl / (ceilings.matmul_tflops * 1e6)
            t_memory = by / (ceilings.copy_gbps * 1e3)
            print(
                f"| {'lowrank' if provider == 'triton' else 'dense'} | {mode} | {dtype_name} "
                f"| {M} | {K} | {N} | {r} | {fl / 1e9:.3f} | {by / 1e6:.1f} | {fl / by:.0f} "
                f"| {max(t_compute, t_memory):.2f} "
                f"| {'compute' if t_compute >= t_memory else 'memory'} |"
            )


def write_rows(rows: list[dict[str, object]], path: Path, fields: list[str] = CSV_FIELDS) -> None:
    """Append rows to ``path`` (header written when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"# {len(rows)} rows appended to {path}")


def comma_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma list whose items must all be in ``allowed``."""

    def parse(text: str) -> list[str]:
        items = text.split(",")
        unknown = sorted(set(items) - set(allowed))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown}; expected a comma list of {list(allowed)}"
            )
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default=None,
        help="default: headline on a GPU, cpu on the CPU",
    )
    parser.add_argument("--providers", type=comma_list(PROVIDERS), default=list(PROVIDERS))
    parser.add_argument("--modes", type=comma_list(MODES), default=list(MODES))
    parser.add_argument(
        "--out", default=None, help="CSV path (default: results/<device>/kernels.csv)"
    )
    parser.add_argument(
        "--predict",
        action="store_true",
        help="print roofline floors for --peak-tflops/--peak-gbps; run nothing",
    )
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--peak-gbps", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.grid is None:
        args.grid = "headline" if args.device.startswith("cuda") else "cpu"
    if args.predict:
        if args.peak_tflops is None or args.peak_gbps is None:
            raise SystemExit("--predict needs --peak-tflops and --peak-gbps")
        predict(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
