"""``lowrank-kernels selftest`` on the CPU: every backend checked, artefacts written, and a
wrong backend is caught."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from lowrank_kernels.ops.backends import BACKENDS
from lowrank_kernels.selftest import check_backend, format_table


def test_cli_selftest_on_cpu_passes_and_writes_its_artefacts(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowrank_kernels",
            "selftest",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "selftest.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["torch on cpu"]["passed"] and steps["triton on cpu"]["passed"]
    assert "cases" in steps["triton on cpu"]["detail"]
    assert "PASS" in proc.stdout and "triton on cpu" in proc.stdout
    assert (tmp_path / "summary.md").is_file()


def test_a_wrong_backend_fails_the_check(monkeypatch):
    torch_backend = BACKENDS["torch"]
    real = torch_backend.chain

    def off_by_a_little(a, b, c, bias, write_intermediate):
        out, z = real(a, b, c, bias, write_intermediate)
        return out * 1.01, z  # 1 % off: far outside 2x the chain's own error

    monkeypatch.setattr(torch_backend, "chain", off_by_a_little)
    step = check_backend("torch", torch.device("cpu"), "cpu")
    assert not step.passed and "y:" in step.detail
    assert "FAIL" in format_table([step])
