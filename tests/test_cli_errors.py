"""Every user error on the command line: one line on stderr, exit status 2, no traceback
(``--debug`` shows it); bad numeric options are refused before any training starts."""

from __future__ import annotations

import json
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
    (["train", "--method", "cuttlefish", "--opt", "track_every=0"], "track_every must be"),
    # refused before training, not at the switch minutes later
    (["train", "--method", "cuttlefish", "--opt", "min_speedup=-1"], "min_speedup must be"),
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


@pytest.fixture(scope="module")
def fixed_rank4_checkpoint(tmp_path_factory):
    """A 2-step ``fixed`` run at rank 4 on the digits CNN, saved by the CLI."""
    path = tmp_path_factory.mktemp("resume") / "ck.pt"
    proc = _cli(
        "train", "--model", "cnn", "--method", "fixed", "--rank", "4", "--steps", "2",
        "--save", str(path), "--quiet", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return path


RESUME_REFUSED = [
    (["--method", "relora"], "method='relora' differs from the checkpoint's method='fixed'"),
    (["--model", "gpt"], "model='gpt' differs"),
    (["--lr", "0.01"], "lr=0.01 differs from the checkpoint's lr=0.003"),
    (["--steps", "5"], "steps=5 differs from the checkpoint's steps=2"),
    (["--seed", "1"], "seed=1 differs"),
    (["--rank", "8"], "strategy_kwargs rank=8 differs"),
    (["--opt", "rank=8"], "strategy_kwargs rank=8 differs"),
]


@pytest.mark.parametrize(
    "args,expected", RESUME_REFUSED, ids=[" ".join(c[0]) for c in RESUME_REFUSED]
)
def test_resume_refuses_options_that_change_the_run(args, expected, fixed_rank4_checkpoint):
    proc = _cli("train", "--resume", str(fixed_rank4_checkpoint), *args, "--quiet", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "only eval_every, device, dist_timeout_s may change" in lines[0]


def test_resume_accepts_matching_options_and_applies_safe_ones(fixed_rank4_checkpoint, tmp_path):
    report = tmp_path / "r.json"
    proc = _cli(
        "train", "--resume", str(fixed_rank4_checkpoint), "--method", "fixed", "--rank", "4",
        "--lr", "0.003", "--eval-every", "1", "--device", "cpu", "--report", str(report),
        "--quiet", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads(report.read_text())["config"]
    assert config["eval_every"] == 1 and config["device"] == "cpu"  # applied
    assert config["strategy_kwargs"] == {"rank": 4} and config["steps"] == 2  # kept
