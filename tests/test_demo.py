"""The demo end to end, as CI runs it: ``lowrank-kernels demo --quick --report out.json``."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

from lowrank_kernels.train import REPORT_KEYS


def test_demo_quick_runs_end_to_end_and_writes_its_report(tmp_path):
    out = tmp_path / "out.json"
    exe = shutil.which("lowrank-kernels")
    cmd = [exe] if exe else [sys.executable, "-m", "lowrank_kernels"]
    proc = subprocess.run(
        [*cmd, "demo", "--quick", "--report", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    full, cf = result["runs"]["full"], result["runs"]["cuttlefish"]
    for report in (full, cf):
        assert set(REPORT_KEYS) <= set(report)
        assert math.isfinite(report["final_val_loss"])
    assert full["method"] == "full" and cf["method"] == "cuttlefish"
    assert full["switch_step"] is None and cf["switch_step"] is not None
    assert cf["ranks"] and cf["params_after"] < cf["params_before"] == full["params_after"]
    # the printed table names every factorized layer with its rank, and the speedup
    for fqn, r in cf["ranks"].items():
        assert any(
            line.split()[:1] == [fqn] and str(r) in line for line in proc.stdout.splitlines()
        )
    assert "speedup" in proc.stdout and "validation loss" in proc.stdout
