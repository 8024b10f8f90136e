"""CPU smoke test of the kernel microbenchmark: it runs and writes a well-formed CSV.

No timing assertions: speed belongs in benchmarks/, not in tests.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmark_writes_csv_with_provenance(tmp_path):
    out = tmp_path / "kernels.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--device", "cpu",
           "--grid", "tiny", "--providers", "torch_chain,dense", "--modes", "fwd,fwdbwd",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from kernels import CSV_FIELDS, flops
    finally:
        sys.path.pop(0)
    assert list(rows[0]) == CSV_FIELDS
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in ("torch_chain", "dense") for m in ("fwd", "fwdbwd")
    }
    for row in rows:
        assert row["device_kind"] == "cpu" and row["device_name"].startswith("CPU")
        for key in ("torch", "triton", "cuda", "package_version", "git_commit", "timestamp"):
            assert row[key], key
        assert "kernels.py" in row["command"]
        median, p20, p80 = float(row["median_ms"]), float(row["p20_ms"]), float(row["p80_ms"])
        assert 0 < p20 <= median <= p80
        M, K, N, r = (int(row[k]) for k in ("M", "K", "N", "r"))
        expected = flops(row["provider"], row["mode"], M, K, N, r)
        assert math.isclose(float(row["tflops"]), expected / median / 1e9, rel_tol=0.01)
        assert float(row["roofline_fraction"]) > 0


def test_flop_formula_matches_design():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from kernels import flops
    finally:
        sys.path.pop(0)
    M, K, N, r = 3, 5, 7, 2
    assert flops("triton", "fwd", M, K, N, r) == 2 * M * r * (K + N)
    assert flops("triton", "fwdbwd", M, K, N, r) == 3 * 2 * M * r * (K + N)
    assert flops("dense", "fwd", M, K, N, r) == 2 * M * K * N
