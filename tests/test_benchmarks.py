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


def _import_benchmark(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_report_speedups_and_readme_section(tmp_path):
    kernels, report = _import_benchmark("kernels"), _import_benchmark("report")
    device_dir = tmp_path / "results" / "FakeGPU"
    device_dir.mkdir(parents=True)
    times = {("triton", 16): 1.0, ("torch_chain", 16): 3.0, ("dense", 16): 4.0,
             ("triton", 1024): 2.0, ("torch_chain", 1024): 2.0, ("dense", 1024): 8.0}  # fmt: skip
    base = dict.fromkeys(kernels.CSV_FIELDS, "x")
    rows = []
    for (provider, M), ms in times.items():
        rows.append({**base, "provider": provider, "mode": "fwd", "dtype": "bf16", "M": M,
                     "K": 64, "N": 64, "r": 8, "median_ms": ms, "roofline_fraction": 0.5,
                     "device_name": "FakeGPU", "device_kind": "cuda",
                     "timestamp": "2026-01-01T00:00:00"})  # fmt: skip
    # an older, slower triton row for M=16 must be superseded by the newer one above
    rows.append({**rows[0], "median_ms": 9.0, "timestamp": "2025-01-01T00:00:00"})
    kernels.write_rows(rows, device_dir / "kernels.csv")

    loaded = report.load(device_dir / "kernels.csv")
    vs_chain = report.speedups(loaded, "triton", "torch_chain")
    assert vs_chain == {("fwd", "bf16", 16, 64, 64, 8): 3.0, ("fwd", "bf16", 1024, 64, 64, 8): 1.0}
    table = "\n".join(report.summary_table(loaded))
    assert "2.00× (1.00–3.00)" in table  # median of 3.0 and 1.0 over the chain
    assert "4.00× (4.00–4.00)" in table  # 4/1 and 8/2 over dense

    pngs = report.plot_device(loaded, device_dir)
    assert [p.name for p in pngs] == ["triton_fwd_bf16_K64_N64.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nstale\n{report.END}\noutro\n")
    assert report.main(["--no-plots", "--results", str(tmp_path / "results"),
                        "--readme", str(readme)]) == 0  # fmt: skip
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "FakeGPU (CUDA figures)" in text and "2.00× (1.00–3.00)" in text
    assert "![triton_fwd_bf16_K64_N64](results/FakeGPU/triton_fwd_bf16_K64_N64.png)" not in text
    report.main(["--results", str(tmp_path / "results"), "--readme", str(readme)])
    assert "![triton_fwd_bf16_K64_N64](results/FakeGPU/triton_fwd_bf16_K64_N64.png)" in (
        readme.read_text()
    )


def test_e2e_benchmark_cpu_smoke(tmp_path):
    e2e = _import_benchmark("e2e")
    proc = subprocess.run(
        [sys.executable, "-m", "lowrank_kernels", "bench", "e2e", "--device", "cpu",
         "--preset", "cpu", "--steps", "6", "--methods", "full,fixed", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "e2e.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == e2e.CSV_FIELDS
    full, fixed = rows
    assert (full["method"], fixed["method"]) == ("full", "fixed")
    assert int(fixed["params"]) < int(full["params"])
    assert float(full["speedup_vs_full"]) == 1.0
    ratio = float(fixed["tokens_per_s"]) / float(full["tokens_per_s"])
    assert math.isclose(float(fixed["speedup_vs_full"]), ratio, rel_tol=1e-2)
    for row in rows:
        assert int(row["steps"]) == 6 and row["device_kind"] == "cpu" and row["git_commit"]
        assert math.isfinite(float(row["final_val_loss"]))
        assert float(row["decode_ms_b1"]) > 0 and float(row["decode_ms_b8"]) > 0
    assert "| fixed |" in (tmp_path / "e2e.md").read_text()
