"""Compiled resources of every Triton chain launch configuration, for sm_80 and sm_90.

No GPU needed: each launch the host can make over a declared grid of calls is compiled
ahead of time (``triton_ops/aot.py``) and its cubin read with ``cuobjdump``: registers,
spills, local memory, shared memory, the MMA instructions, resident blocks per SM.

    python benchmarks/kernel_resources.py                      # the CI grid, both archs
    python benchmarks/kernel_resources.py --update-notes       # the table in NOTES.md
    python benchmarks/kernel_resources.py --json rows.json     # one row per binary
    python benchmarks/kernel_resources.py --explore 64,128,64,256,8,3 --rank 512

Exit status 1 when any compiled launch spills or does not fit its arch (``--explore``
only reports). ``tests/test_kernel_resources.py`` runs this in CI.
"""

from __future__ import annotations

import os

# The kernels must be compiled, not interpreted: decided when triton is first imported.
# Set to 0 (not unset) so that importing lowrank_kernels on a machine without CUDA does
# not opt into the interpreter.
os.environ["TRITON_INTERPRET"] = "0"
# Triton 3.9 warns that its default (fusion on) will change; keep what GPUs run today.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse
import datetime
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton_ops import aot
from triton_ops.chain import ChainConfig


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def summarize(resources: list[aot.Resources]) -> list[dict[str, object]]:
    """One row per (arch, operand family, config, Z path): the worst case over every
    specialization compiled for it (max registers, spills and shared memory, min blocks)."""
    groups: dict[tuple, list[aot.Resources]] = defaultdict(list)
    for res in resources:
        family = "fp32" if res.call.dtype == "fp32" else "fp16/bf16"
        call = res.call
        aligned = call.K % 16 == 0 and call.N % 16 == 0 and call.r % 16 == 0
        groups[(res.arch, family, res.config, res.z_on_chip, aligned)].append(res)
    rows = []

    def order(item):
        (arch, family, config, on_chip, aligned), _ = item
        return (arch, family, not aligned, -config.block_r, not on_chip, config.block_m,
                config.block_n)  # fmt: skip

    for (arch, family, config, on_chip, aligned), group in sorted(groups.items(), key=order):
        rows.append(
            {
                "arch": f"sm_{arch}",
                "dtype": family,
                "operands": "aligned" if aligned else "odd",
                "tile": f"{config.block_m}×{config.block_n}×{config.block_k}",
                "block_r": config.block_r,
                "z": "chip" if on_chip else "memory",
                "warps": config.num_warps,
                "stages": config.num_stages,
                "binaries": len(group),
                "registers": max(r.registers for r in group),
                "spill_bytes": max(r.spill_bytes + r.local_bytes for r in group),
                "shared_kb": round(max(r.shared_bytes for r in group) / 1024, 1),
                "blocks_per_sm": min(r.blocks_per_sm for r in group),
                "warps_per_sm": min(r.occupancy_warps for r in group),
                "mma": "/".join(sorted({r.mma for r in group})),
                "ok": all(r.fits and r.spill_free for r in group),
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    columns = ["arch", "dtype", "operands", "tile", "block_r", "z", "warps", "stages", "binaries",
               "registers", "spill_bytes", "shared_kb", "blocks_per_sm", "warps_per_sm", "mma",
               "ok"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def provenance(options: list[str], seconds: float) -> str:
    command = " ".join(["python benchmarks/kernel_resources.py", *options])
    return (
        f"Generated {datetime.date.today().isoformat()} by `{command}` "
        f"(Triton {triton.__version__}, torch {torch.__version__}, no GPU: "
        f"ahead-of-time compile for sm_80 and sm_90, {seconds:.0f} s)."
    )


NOTES = Path(__file__).resolve().parent / "NOTES.md"
START, END = "<!-- resources:start -->", "<!-- resources:end -->"


def update_notes(block: str, notes: Path = NOTES) -> None:
    """Replace what stands between the resources markers of ``notes`` with ``block``."""
    text = notes.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{notes}: markers {START} … {END} not found")
    notes.write_text(f"{head}{START}\n{block}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", choices=["ci"], default="ci")
    parser.add_argument("--archs", type=_ints, default=[80, 90])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write one row per compiled binary here")
    parser.add_argument("--markdown", type=Path, help="write the summary table here")
    parser.add_argument(
        "--update-notes",
        action="store_true",
        help="replace the table between the resources markers in benchmarks/NOTES.md",
    )
    parser.add_argument(
        "--explore",
        type=_ints,
        help="compile this config (block_m,block_n,block_k,block_r,warps,stages) instead of "
        "the kernel's candidates, for --rank on the forward and dX uses",
    )
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--dtype", choices=list(aot.DTYPES), default="bf16")
    args = parser.parse_args(argv)
    options = list(sys.argv[1:] if argv is None else argv)

    start = time.perf_counter()
    if args.explore:
        if len(args.explore) != 6:
            parser.error("--explore takes 6 ints: block_m,block_n,block_k,block_r,warps,stages")
        config = ChainConfig(*args.explore)
        calls = [aot.Call(4096, 4096, 4096, args.rank, args.dtype, use) for use in aot.USES]
        resources = aot.compile_all(calls, args.archs, args.workers, configs=[config])
    else:
        calls = [call for part in aot.CI_GRID for call in aot.declared_calls(**part)]
        resources = aot.compile_all(calls, args.archs, args.workers)
    seconds = time.perf_counter() - start

    rows = summarize(resources)
    table = markdown(rows)
    print(table)
    print(f"\n{len(resources)} binaries; {provenance(options, seconds)}")
    if args.json:
        args.json.write_text(json.dumps([r.row() for r in resources], indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + provenance(options, seconds) + "\n")
    if args.update_notes and not args.explore:
        update_notes(table + "\n\n" + provenance(options, seconds))
    if args.explore:
        return 0
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
