"""Every user error on the command line: one line on stderr, exit status 2, no traceback
(``--debug`` shows it); bad numeric options are refused before any training starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lowrank_kernels", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


CASES = [
    (["train", "--steps", "0"], "--steps: must be >= 1"),
    (["train", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["train", "--lr=-1e-3"], "--lr: must be a finite number > 0"),
    (["train", "--weight-decay", "-1"], "--weight-decay: must be a finite number >= 0"),
    (["train", "--eval-every", "-1"], "--eval-every: must be >= 1"),
    (["train", "--warmup-steps", "-5"], "--warmup-steps: must be >= 0"),
    (["train", "--epochs", "inf"], "--epochs: must be a finite number > 0"),
    (["train", "--dist-timeout", "0"], "--dist-timeout: must be a finite number > 0"),
    (["train", "--save", "no-such-dir/ck.pt"], "does not exist"),
    (["train", "--save-every", "5"], "--save-every needs --save"),
    (["train", "--batch-size", "two"], "--batch-size: expected an int"),
    (["train", "--method", "full", "--rank", "4"], "--rank is not used by --method full"),
    (["train", "--opt", "novalue"], "--opt expects KEY=VALUE"),
    (["train", "--resume", "does-not-exist.pt"], "does not exist"),
    (["nonsense"], "invalid choice"),
]
if not torch.cuda.is_available():
    CASES.append((["train", "--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_error_is_one_line_and_exit_status_2(args, expected, tmp_path):
    quiet = ["--quiet", "--no-progress"] if args[0] == "train" else []
    proc = _cli(*args, *quiet, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in lines[0], lines[0]
    assert not list(tmp_path.iterdir())  # nothing written, nothing trained


@pytest.mark.parametrize("content", [b"", b'{"not": "a checkpoint"}'], ids=["empty", "json"])
def test_resume_from_a_file_that_is_not_a_checkpoint(content, tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    proc = _cli("train", "--resume", str(path), "--quiet", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a readable lowrank-kernels checkpoint" in (
        proc.stderr
    )
    debug = _cli("--debug", "train", "--resume", str(path), "--quiet", "--no-progress")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
