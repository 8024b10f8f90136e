"""The trainer: exact resume in a fresh process after structural switches, reports, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lowrank_kernels.cli import main
from lowrank_kernels.nn import LoRALinear, LowRankConv2d, LowRankLinear
from lowrank_kernels.train import REPORT_KEYS, TrainConfig, Trainer


def tiny_config(method: str, steps: int, model: str = "gpt", **strategy_kwargs) -> TrainConfig:
    gpt_model = {"n_layer": 1, "n_head": 2, "d_model": 32}
    task_kwargs = (
        {"block_size": 16, "eval_batches": 1, "model_kwargs": gpt_model}
        if model == "gpt"
        else {"model_kwargs": {"width": 8, "hidden": 32}}
    )
    return TrainConfig(
        model=model,
        method=method,
        steps=steps,
        batch_size=4 if model == "gpt" else 16,
        lr=1e-2,
        warmup_steps=2,
        eval_every=1000,
        device="cpu",
        task_kwargs=task_kwargs,
        strategy_kwargs=strategy_kwargs,
    )


# name: (config, save after this many steps — past the structural change(s))
RESUME_CASES = {
    # switch at step 6 (fallback); saved after it
    "cuttlefish": (
        tiny_config(
            "cuttlefish", 14, track_every=2, tol=0.0, span=3, window=3, max_switch_step=6,
            rank_multiple=4, profile=False,
        ),
        8,
    ),
    # restarts after steps 4 and 8: saved after the first, continued across the second
    # (whose re-init of A draws from the RNG)
    "relora": (tiny_config("relora", 14, rank=4, cycle=4, restart_warmup=2), 7),
    # growth every 2 steps from step 2, freeze at 10: saved mid-growth, continued past the freeze
    "inrank": (
        tiny_config("inrank", 14, init_rank=1, buffer=2, gap=2, warmup=2, growth_steps=10),
        7,
    ),
    "cnn-fixed": (tiny_config("fixed", 8, model="cnn", rank=0.25, rank_multiple=4), 3),
    # saved before the switch: the continuation switches at ranks that depend on the
    # restored stable-rank history and ξ (recorded from the *initial* weights)
    "cuttlefish-pre-switch": (
        tiny_config(
            "cuttlefish", 14, track_every=2, tol=0.0, span=3, window=3, max_switch_step=6,
            rank_multiple=1, profile=False,
        ),
        4,
    ),
}  # fmt: skip
CONTINUE = 4


def test_resume_after_switch_in_a_fresh_process_reproduces_the_losses(tmp_path):
    expected, paths = {}, {}
    for name, (config, save_at) in RESUME_CASES.items():
        trainer = Trainer(config, progress=False, log=None)
        trainer.fit(until=save_at)
        ranks = trainer.strategy.ranks(trainer.model)
        if name == "cuttlefish-pre-switch":
            assert not ranks and trainer.strategy.measured_at == [2, 4]
        elif name == "inrank":
            assert max(ranks.values()) > 1, "saved before any growth"
        else:
            assert ranks and trainer.strategy.switch_step is not None, name
        paths[name] = str(tmp_path / f"{name}.pt")
        trainer.save(paths[name])
        expected[name] = [trainer.train_step() for _ in range(CONTINUE)]
        if name == "cuttlefish-pre-switch":
            assert trainer.strategy.switch_step == 6 and trainer.strategy.ranks(trainer.model)
    cnn = Trainer.from_checkpoint(paths["cnn-fixed"], progress=False, log=None).model
    assert isinstance(cnn.conv2, LowRankConv2d) and isinstance(cnn.fc1, LowRankLinear)

    script = textwrap.dedent(
        f"""
        import json, sys
        from lowrank_kernels.train import Trainer
        out = {{}}
        for name, path in json.loads(sys.argv[1]).items():
            trainer = Trainer.from_checkpoint(path, progress=False, log=None)
            out[name] = [trainer.train_step() for _ in range({CONTINUE})]
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in RESUME_CASES:
        # floats survive JSON exactly (repr round-trips), so this is bit-exact equality
        assert resumed[name] == expected[name], name


def test_resume_rebuilds_structure_and_optimizer(tmp_path):
    config, save_at = RESUME_CASES["relora"]
    trainer = Trainer(config, progress=False, log=None)
    trainer.fit(until=save_at)
    trainer.save(tmp_path / "ckpt.pt")
    again = Trainer.from_checkpoint(tmp_path / "ckpt.pt", progress=False, log=None)
    assert again.step == save_at
    assert again.strategy.restarts == trainer.strategy.restarts == [4]
    assert sum(isinstance(m, LoRALinear) for m in again.model.modules()) == 4
    for (name, a), (_, b) in zip(
        trainer.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids = sorted(id(p) for g in again.optimizer.param_groups for p in g["params"])
    assert ids == sorted(id(p) for p in again.model.parameters() if p.requires_grad)


def test_report_has_every_key_and_consistent_values():
    trainer = Trainer(tiny_config("fixed", 4, rank=0.5), progress=False, log=None).fit()
    report = trainer.report()
    assert set(REPORT_KEYS) <= set(report)
    json.dumps(report)  # serialisable
    assert report["method"] == "fixed" and report["model"] == "gpt"
    assert report["device"] == "cpu" and "torch" in report["backend"]
    assert report["switch_step"] == 0
    lowrank = {f: m.rank for f, m in trainer.model.named_modules() if isinstance(m, LowRankLinear)}
    assert report["ranks"] == lowrank and lowrank
    assert report["params_before"] > report["params_after"]
    assert report["params_after"] == sum(p.numel() for p in trainer.model.parameters())
    assert report["train_time_s"] > 0 and report["tokens_per_s"] > 0
    assert report["final_train_loss"] == pytest.approx(sum(trainer.losses) / 4)
    assert math.isfinite(report["final_val_loss"])
    assert report["steps"] == 4


def test_cli_train_writes_a_report(tmp_path, capsys):
    out = tmp_path / "cnn.json"
    rc = main(
        [
            "train", "--model", "cnn", "--method", "fixed", "--rank", "0.25", "--steps", "3",
            "--batch-size", "16", "--opt", "rank_multiple=4",
            "--report", str(out), "--no-progress", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["model"] == "cnn" and report["method"] == "fixed"
    # ceil(0.25·full) rounded up to 4: conv2 (32→64, full 64) 16, conv3 16, fc1 (1024→128) 32
    assert report["ranks"] == {"conv2": 16, "conv3": 16, "fc1": 32}
    assert "final val loss" in capsys.readouterr().out


def test_cli_rejects_a_rank_for_methods_that_choose_their_own(tmp_path, capsys):
    argv = ["train", "--method", "cuttlefish", "--rank", "8", "--steps", "1", "--no-progress"]
    assert main(argv) == 2
    assert "--rank is not used by --method cuttlefish" in capsys.readouterr().err
    argv = ["train", "--method", "relora", "--opt", "cycle", "--steps", "1", "--no-progress"]
    assert main(argv) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_bad_config_raises_clear_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        Trainer(tiny_config("sparse", 2), progress=False)
    with pytest.raises(ValueError, match="model must be one of"):
        Trainer(TrainConfig(model="rnn", steps=2), progress=False)
    with pytest.raises(ValueError, match="steps or epochs"):
        Trainer(TrainConfig(model="gpt", steps=None), progress=False)
    with pytest.raises(TypeError, match="bad options for method 'fixed'"):
        Trainer(tiny_config("fixed", 2, cycle=3), progress=False)
    assert isinstance(nn.Linear(2, 2), nn.Module)
