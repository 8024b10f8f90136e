"""Every Triton chain launch the host can make fits and does not spill on sm_80 and sm_90.

No GPU needed: ``benchmarks/kernel_resources.py`` compiles, ahead of time, every launch
configuration the launch code offers over the declared CI grid
(``lowrank_kernels.triton_ops.aot.CI_GRID``: both M classes, divisible and odd K/N/r,
every dtype and fp32 precision, the forward and the dX use), for sm_80 and sm_90, and
reads each cubin's registers, spills, local and shared memory. It runs in a child
process because the kernels must be compiled, not interpreted (this test process has
``TRITON_INTERPRET=1``). Triton's compile cache makes repeat runs take about a minute; a
cold run takes a few minutes on two cores.

The csrc/ kernels get the same gate in ``test_csrc_compile.py`` (``nvcc -Xptxas -v``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_resources.py"


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        cwd=tmp,
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resources")
    rows_path, table_path = tmp / "rows.json", tmp / "table.md"
    proc = _run(["--json", str(rows_path), "--markdown", str(table_path)], tmp)
    assert rows_path.is_file(), proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc, json.loads(rows_path.read_text()), table_path.read_text()


def test_every_launch_fits_and_does_not_spill(compiled, capsys):
    proc, rows, table = compiled
    with capsys.disabled():
        print("\nTriton chain kernel, compiled resources (worst case per config):\n" + table)
    bad = [row for row in rows if not (row["fits"] and row["spill_free"] and row["registers"] > 0)]
    assert not bad, json.dumps(bad[:5], indent=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {row["arch"] for row in rows} == {"sm_80", "sm_90"}
    # Hopper gets wgmma where the tile allows it (64+ rows, 16-bit operands)
    assert any(row["mma"] == "wgmma" for row in rows if row["arch"] == "sm_90")


def test_every_candidate_of_the_grid_was_compiled(compiled):
    """The gate covers what the launch code offers: each candidate configuration of each
    call of the grid appears among the compiled binaries, for both archs."""
    from lowrank_kernels.triton_ops import aot

    from lowrank_kernels import triton_ops

    _, rows, _ = compiled
    configs_seen = {
        (
            row["arch"],
            row["block_m"],
            row["block_n"],
            row["block_k"],
            row["block_r"],
            row["num_warps"],
            row["num_stages"],
            row["z_on_chip"],
        )
        for row in rows
    }
    calls = [call for part in aot.CI_GRID for call in aot.declared_calls(**part)]
    assert len(calls) > 100
    for call in calls:
        dtype = aot.DTYPES[call.dtype]
        aligned = call.K % 16 == 0 and call.N % 16 == 0 and call.r % 16 == 0
        configs = triton_ops.candidate_configs(
            call.M, call.r, dtype, aligned=aligned, interpreted=False
        )
        for cfg in configs:
            for arch in ("sm_80", "sm_90"):
                key = (arch, cfg.block_m, cfg.block_n, cfg.block_k, cfg.block_r,
                       cfg.num_warps, cfg.num_stages, cfg.z_on_chip(call.r))  # fmt: skip
                assert key in configs_seen, (call, cfg, arch)


def test_the_gate_can_fail(tmp_path):
    """A tile far too large for the register file and shared memory is reported as such."""
    proc = _run(
        [
            "--explore",
            "256,256,128,256,4,4",
            "--rank",
            "256",
            "--archs",
            "90",
            "--json",
            str(tmp_path / "rows.json"),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows and all(not (row["fits"] and row["spill_free"]) for row in rows), rows


def test_occupancy_model():
    from lowrank_kernels.triton_ops.aot import blocks_per_sm

    # 8 warps at 128 registers: 32 K registers per block, two blocks by registers
    assert blocks_per_sm(90, 128, 32 * 1024, 8) == 2
    # shared memory bound: 100 KB + 1 KB reserved, two fit in 228 KB
    assert blocks_per_sm(90, 32, 100 * 1024, 4) == 2
    assert blocks_per_sm(80, 32, 164 * 1024, 4) == 0  # over the 163 KB per-block limit
