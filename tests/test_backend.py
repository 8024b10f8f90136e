"""Backend selection: names, env variable, forced backends never fall back silently."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.ops import resolve_backend


def test_default_is_auto_and_torch_is_always_available():
    assert lrk.get_backend() == "auto"
    assert "torch" in lrk.available_backends()
    assert resolve_backend(torch.device("cpu")).name == "torch"


def test_set_and_get():
    lrk.set_backend("torch")
    assert lrk.get_backend() == "torch"
    lrk.set_backend("AUTO")
    assert lrk.get_backend() == "auto"


def test_unknown_name():
    with pytest.raises(ValueError, match=r"set_backend\(name\) must be one of"):
        lrk.set_backend("cublas")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_forced_cuda_backend_without_gpu_raises():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        lrk.set_backend("cuda")
    assert lrk.get_backend() == "auto"


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_env_variable_sets_initial_backend():
    proc = _run(
        "import lowrank_kernels as l; print(l.get_backend())", LOWRANK_KERNELS_BACKEND="torch"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torch"


def test_bad_env_variable_is_a_clear_error():
    proc = _run("import lowrank_kernels", LOWRANK_KERNELS_BACKEND="nope")
    assert proc.returncode != 0
    assert "LOWRANK_KERNELS_BACKEND must be one of" in proc.stderr


def test_cli_info_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "lowrank_kernels", "info"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for key in ("lowrank_kernels", "torch", "triton", "backends available", "_C extension"):
        assert key in proc.stdout


def test_triton_kernels_install_inside_the_package_namespace(tmp_path):
    """``lowrank_kernels.triton_ops`` imports from anywhere; no top-level ``triton_ops``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, lowrank_kernels.triton_ops as t; "
            "print(t.__name__, importlib.util.find_spec('triton_ops'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the checkout: only what is installed is importable
        env={**os.environ, "PYTHONPATH": ""},
    )
    if proc.returncode != 0 and "No module named 'triton'" in proc.stderr:
        pytest.skip("triton is not installed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["lowrank_kernels.triton_ops", "None"]


def test_import_changes_no_environment_variable():
    """Importing (and using) the package must not opt the process into the Triton
    interpreter: that would silently interpret the user's own kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, torch, lowrank_kernels as l; "
            "l.lowrank_linear(torch.randn(2, 4), torch.randn(4, 2), torch.randn(2, 3)); "
            "print(os.environ.get('TRITON_INTERPRET'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
