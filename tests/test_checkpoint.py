"""Nothing is lost: atomic checkpoint and report writes, verified tensors, interruption."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lowrank_kernels.train import TrainConfig, Trainer
from lowrank_kernels.train.checkpoint import atomic_torch_save, atomic_write, state_digest


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


DISK_FULL = textwrap.dedent(
    """
    import errno, os, sys, torch
    from lowrank_kernels.train.checkpoint import atomic_torch_save
    directory = sys.argv[1]
    path = os.path.join(directory, "ck.pt")
    atomic_torch_save({"w": torch.ones(16_000)}, path)  # 64 KB: fits in the 256 KB tmpfs
    before = open(path, "rb").read()
    try:
        atomic_torch_save({"w": torch.ones(100_000)}, path)  # 400 KB: does not
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        print("ERROR", exc)
    else:
        raise SystemExit("no error on a full disk")
    assert open(path, "rb").read() == before
    assert torch.load(path, weights_only=True)["w"].numel() == 16_000
    print("LEFT", sorted(os.listdir(directory)))
    """
)


def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A 256 KB tmpfs (mounted in a private mount namespace): the second, larger save fails
    with ENOSPC and a clear message, and the first checkpoint stays whole."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here; test_a_failed_write_... covers ENOSPC by simulation")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {mount_point} || exit 77; "
        f"exec {sys.executable} {script} {mount_point}"
    )
    proc = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:200]}); simulated instead")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no space left on the device" in proc.stdout and "previous file" in proc.stdout
    assert "LEFT ['ck.pt']" in proc.stdout  # no temporary file left behind


def test_digest_sees_one_flipped_bit():
    state = {"model": {"w": torch.randn(3, 3)}, "optimizer": {"state": {0: torch.zeros(2)}}}
    digest = state_digest(state)
    state["model"]["w"].view(torch.int32)[1, 1] ^= 1
    assert state_digest(state) != digest


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


def test_sigkill_at_any_moment_leaves_the_last_checkpoint_whole(tmp_path):
    """SIGKILL cannot be handled: what survives is the last checkpoint, which must load
    and resume however the kill fell (a checkpoint is written after every step here, so
    the kill is likely to land inside a write)."""
    ck = tmp_path / "ck.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowrank_kernels", "train", "--model", "cnn", "--method",
         "full", "--epochs", "500", "--save", str(ck), "--save-every", "1", "--quiet",
         "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ck.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ck.exists(), proc.communicate()
    time.sleep(1.0)  # a few more saves
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = Trainer.from_checkpoint(ck, progress=False, log=None)
    assert resumed.step >= 1
    resumed.fit(until=resumed.step + 1)  # and it trains on


def test_resume_overrides_that_change_the_run_are_refused(tmp_path):
    trainer = _tiny_trainer(steps=4).fit(until=1)  # evaluates every 4 steps
    path = tmp_path / "ck.pt"
    trainer.save(path)
    changes = [
        ("lr", 0.1),
        ("steps", 10),
        ("method", "full"),
        ("betas", (0.9, 0.9)),
        ("strategy_kwargs", {"rank": 8}),
        ("task_kwargs", {"batch_size": 7}),
    ]
    for field, value in changes:
        with pytest.raises(ValueError, match=f"{field}.*differs from the checkpoint's"):
            Trainer.from_checkpoint(path, progress=False, log=None, **{field: value})
    with pytest.raises(TypeError, match="'learning_rate' is not a TrainConfig field"):
        Trainer.from_checkpoint(path, progress=False, log=None, learning_rate=0.1)
    same = Trainer.from_checkpoint(
        path, progress=False, log=None, lr=trainer.config.lr, betas=trainer.config.betas,
        strategy_kwargs={"rank": 4}, eval_every=1,
    )  # fmt: skip
    assert same.config.lr == trainer.config.lr
    assert [e["step"] for e in same.fit().evals] == [2, 3, 4]  # eval_every=1 applied


def test_a_relabelled_checkpoint_is_refused(tmp_path):
    """A fixed-rank checkpoint edited to say method 'full' must not resume as 'full'."""
    trainer = _tiny_trainer().fit()
    path = tmp_path / "ck.pt"
    trainer.save(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["method"] = "full"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match the digest"):
        Trainer.from_checkpoint(path, progress=False, log=None)
    # Even with the digest recomputed, the strategy state names the method that saved it.
    ckpt["digest"] = state_digest({k: v for k, v in ckpt.items() if k != "digest"})
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="saved by method 'fixed', not 'full'"):
        Trainer.from_checkpoint(path, progress=False, log=None)


def test_digest_sees_an_edited_plain_value():
    state = {"config": {"method": "fixed", "lr": 0.003}, "step": 4}
    digest = state_digest(state)
    assert state_digest({"config": {"method": "full", "lr": 0.003}, "step": 4}) != digest
    assert state_digest({"config": {"method": "fixed", "lr": 0.0030000001}, "step": 4}) != digest
    assert state_digest({"config": {"method": "fixed", "lr": 0.003}, "step": 4.0}) != digest
    assert state_digest({"config": {"lr": 0.003, "method": "fixed"}, "step": 4}) == digest
