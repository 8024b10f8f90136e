"""Nothing is lost: atomic checkpoint and report writes, verified tensors, interruption."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lowrank_kernels.train import TrainConfig, Trainer
from lowrank_kernels.train.checkpoint import atomic_torch_save, atomic_write, tensor_digest


def _tiny_trainer(steps=4):
    config = TrainConfig(model="cnn", method="fixed", steps=steps, eval_every=steps,
                         strategy_kwargs={"rank": 4})  # fmt: skip
    return Trainer(config, progress=False, log=None)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"w": torch.arange(4)}, path)
    before = path.read_bytes()

    def disk_full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"no space left on the device.*previous file") as info:
        atomic_write(path, disk_full)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_digest_sees_one_flipped_bit():
    state = {"model": {"w": torch.randn(3, 3)}, "optimizer": {"state": {0: torch.zeros(2)}}}
    digest = tensor_digest(state)
    state["model"]["w"].view(torch.int32)[1, 1] ^= 1
    assert tensor_digest(state) != digest


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    trainer = _tiny_trainer().fit()
    path = tmp_path / "ck.pt"
    trainer.save(path)
    assert Trainer.from_checkpoint(path, progress=False, log=None).step == trainer.step
    ckpt = torch.load(path, weights_only=True)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name].view(-1)[0] += 1.0  # what a flipped byte on disk looks like
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match the digest"):
        Trainer.from_checkpoint(path, progress=False, log=None)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_checkpoint_and_marks_the_report(signum, tmp_path):
    """A real process, a real signal: the step finishes, the checkpoint is written and
    resumable, the report says interrupted, and the exit status is 128 + signal."""
    ck, report = tmp_path / "ck.pt", tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lowrank_kernels",
            "train",
            "--model",
            "cnn",
            "--method",
            "full",
            "--epochs",
            "500",
            "--save",
            str(ck),
            "--save-every",
            "1",
            "--report",
            str(report),
            "--quiet",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ck.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ck.exists(), proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    data = json.loads(report.read_text())
    assert data["interrupted"] == signal.Signals(signum).name
    resumed = Trainer.from_checkpoint(ck, progress=False, log=None)
    assert resumed.step == data["steps"] > 0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
