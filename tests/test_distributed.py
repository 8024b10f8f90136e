"""The trainer under ``torchrun --nproc_per_node 2`` (gloo, CPU): one structure everywhere.

One torchrun launch trains Cuttlefish (with the profiler on) and InRank on a tiny char
GPT. On rank 1 the stable-rank measurement, the scaled ranks, the profiler and InRank's
spectra are sabotaged (they return different numbers): the run still has to switch at
the same step to the same ranks on both processes, which only holds when rank 0 decides
and broadcasts. Each process then saves its full state_dict; both must be bit-identical
(the processes see different batches, so this also proves the gradients are averaged).
Rank 0's checkpoint must resume on world size 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from lowrank_kernels.train import Trainer

pytestmark = pytest.mark.distributed

TIMEOUT_S = 180  # a normal run takes ~12 s on 2 busy cores

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import lowrank_kernels.rank as lrk_rank
    import lowrank_kernels.profiler as lrk_profiler
    from lowrank_kernels.train import TrainConfig, Trainer
    from lowrank_kernels.train import strategies
    from lowrank_kernels.distributed import get_rank, get_world_size

    out_dir = sys.argv[1]
    rank = int(os.environ["RANK"])
    if rank != 0:
        # Sabotage every local decision input on rank 1: if any decision were made
        # locally, rank 1 would switch at another step or to other ranks.
        lrk_rank.StableRankTracker.update = lambda self: {f: 1.0 for f in self.fqns}
        lrk_rank.StableRankTracker.scaled_ranks = lambda self, m=8: {f: 2 for f in self.fqns}
        lrk_rank.StableRankTracker.converged = lambda self, **kw: False
        def fake_profile(*args, **kwargs):
            raise AssertionError("rank 1 must not profile: rank 0 decides")
        lrk_profiler.profile_layers = fake_profile
        strategies.InRank.spectra = lambda self, model: {
            f: torch.ones(m.rank) for f, m in strategies.lowrank_modules(model).items()
        }

    def config(method, steps, **kw):
        return TrainConfig(
            model="gpt", method=method, steps=steps, batch_size=4, lr=1e-2, warmup_steps=2,
            eval_every=1000, device="cpu",
            task_kwargs={"block_size": 16, "eval_batches": 1,
                         "model_kwargs": {"n_layer": 1, "n_head": 2, "d_model": 32}},
            strategy_kwargs=kw,
        )

    runs = {
        # converges at the 3rd measurement (step 6) with tol=1e9; profiler on, with a
        # threshold every layer passes, so the verdicts are exercised but deterministic
        "cuttlefish": config("cuttlefish", 10, track_every=2, tol=1e9, span=2, window=2,
                             max_switch_step=8, rank_multiple=4, profile=True,
                             min_speedup=1e-6, profile_repeats=1),
        "inrank": config("inrank", 8, init_rank=1, buffer=2, gap=2, warmup=2, growth_steps=6),
        # restarts after steps 3 and 6: A is re-drawn from each process's own RNG, which
        # rank 1 advances first (below), so only rank 0's broadcast keeps them equal
        "relora": config("relora", 8, rank=4, cycle=3, restart_warmup=1),
    }
    if rank != 0:
        from lowrank_kernels.nn import LoRALinear
        merge_and_reinit = LoRALinear.merge_and_reinit
        def shifted(self):  # rank 1's RNG drifts from rank 0's before each re-draw of A
            torch.rand(7)
            merge_and_reinit(self)
        LoRALinear.merge_and_reinit = shifted
    result = {}
    for name, cfg in runs.items():
        trainer = Trainer(cfg, progress=False, log=None)
        trainer.fit(until=8)
        trainer.save(os.path.join(out_dir, f"{name}.pt"))  # rank 0 only
        torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"{name}-rank{rank}.pt"))
        result[name] = {
            "switch_step": trainer.strategy.switch_step,
            "ranks": trainer.strategy.ranks(trainer.model),
            "losses": trainer.losses,
            "wrapped": type(trainer.train_model).__name__,
            "world_size": trainer.report()["world_size"],
            "restarts": getattr(trainer.strategy, "restarts", None),
        }
    result.update(rank=get_rank(), world=get_world_size())
    with open(os.path.join(out_dir, f"result-rank{rank}.json"), "w") as f:
        json.dump(result, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: str, out_dir: str, nproc: int = 2, *, expect_rc: int | None = 0) -> str:
    """Run ``script`` under torchrun and return its output; kill the whole process group on
    timeout. ``expect_rc=None`` accepts any non-zero exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        script,
        out_dir,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, so a timeout can kill the workers
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {TIMEOUT_S} s:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if expect_rc is None:
        assert proc.returncode != 0, f"torchrun should have failed:\n{out[-6000:]}"
    else:
        assert proc.returncode == expect_rc, f"torchrun rc {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(WORKER)
    _torchrun(str(script), str(out))
    results = [json.loads((out / f"result-rank{r}.json").read_text()) for r in range(2)]
    return out, results


def test_both_processes_switch_at_the_same_step_to_the_same_ranks(ddp_run):
    _, (r0, r1) = ddp_run
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)
    for name in ("cuttlefish", "inrank"):
        a, b = r0[name], r1[name]
        assert a["wrapped"] == b["wrapped"] == "DistributedDataParallel"
        assert a["world_size"] == 2
        assert a["switch_step"] == b["switch_step"] == 6, name
        assert a["ranks"] == b["ranks"], name
        assert a["losses"] == b["losses"], name  # mean over both processes
    assert r0["relora"]["switch_step"] == r1["relora"]["switch_step"] == 0
    assert r0["relora"]["restarts"] == r1["relora"]["restarts"] == [3, 6]
    assert r0["relora"]["ranks"] == r1["relora"]["ranks"] and r0["relora"]["ranks"]
    cut = r0["cuttlefish"]["ranks"]
    # rank 1's sabotaged scaled ranks were all 2; rank 0 chose its own (multiples of 4)
    assert cut and all(r % 4 == 0 for r in cut.values()), cut
    # InRank grew on rank 0's spectra: rank 1's flat fake spectra would also give ranks,
    # but the two must agree layer by layer, which the assertion above checks
    assert r0["inrank"]["ranks"]


def test_parameters_are_identical_across_processes(ddp_run):
    out, _ = ddp_run
    for name in ("cuttlefish", "inrank", "relora"):
        s0 = torch.load(out / f"{name}-rank0.pt", weights_only=True)
        s1 = torch.load(out / f"{name}-rank1.pt", weights_only=True)
        assert list(s0) == list(s1)
        for key in s0:
            assert torch.equal(s0[key], s1[key]), f"{name}: {key} differs between processes"
        # the switch happened: factors (or LoRA adapters) are in the state
        assert any(k.endswith((".V", ".A")) for k in s0), name


def test_checkpoint_from_two_processes_resumes_on_one(ddp_run, monkeypatch):
    out, (r0, _) = ddp_run
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    trainer = Trainer.from_checkpoint(out / "cuttlefish.pt", progress=False, log=None)
    assert trainer.world_size == 1 and trainer.step == 8
    assert trainer.strategy.switch_step == 6
    assert trainer.strategy.ranks(trainer.model) == r0["cuttlefish"]["ranks"]
    saved = torch.load(out / "cuttlefish-rank0.pt", weights_only=True)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert trainer.losses == r0["cuttlefish"]["losses"]
    trainer.fit()  # the remaining two steps, single process, no DDP wrapper
    assert trainer.step == 10 and trainer.train_model is trainer.model
    assert all(torch.isfinite(torch.tensor(trainer.losses)))


FSDP_WORKER = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.tensor import DTensor
    import lowrank_kernels as lrk
    from lowrank_kernels.distributed import (
        broadcast_object, full_state_dict, fully_shard_lowrank, get_rank)
    from lowrank_kernels.nn import LoRALinear

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 8))

    def batches(step):
        g = torch.Generator().manual_seed(100 + step)
        return torch.randn(world, 4, 16, generator=g), torch.randn(world, 4, 8, generator=g)

    def train(model, steps, start, full):
        # SGD, not Adam: Adam is scale-invariant and would hide a sum-instead-of-mean bug
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for step in range(start, start + steps):
            x, y = batches(step)
            if full:  # the single-process reference sees both processes' batches
                x, y = x.flatten(0, 1), y.flatten(0, 1)
            else:
                x, y = x[rank], y[rank]
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()

    ref = build()
    model = fully_shard_lowrank(build())
    train(model, 2, 0, full=False)
    train(ref, 2, 0, full=True)

    # the switch: gather, let rank 0 choose ranks, rebuild, factorize + LoRA, shard again
    state = full_state_dict(model)
    pre_diff = max(float((state[k] - v).abs().max()) for k, v in ref.state_dict().items())
    ranks = broadcast_object({"0": 8, "2": 8} if rank == 0 else {"0": 1})
    def switch(dense_state):
        new = build()
        new.load_state_dict(dense_state)
        lrk.factorize(new, ranks, skip_unprofitable=False)
        torch.manual_seed(1)  # LoRA's A init
        new[4] = LoRALinear.from_linear(new[4], 4)
        return new
    model = fully_shard_lowrank(switch(state))
    ref = switch(ref.state_dict())
    sharded = {n: type(p).__name__ for n, p in model.named_parameters()}
    train(model, 3, 2, full=False)
    train(ref, 3, 2, full=True)

    got = full_state_dict(model)
    expect = ref.state_dict()
    diff = max(float((got[k] - expect[k]).abs().max()) for k in expect)
    scale = max(float(v.abs().max()) for v in expect.values())
    out = {"rank": rank, "pre_diff": pre_diff, "keys": sorted(got) == sorted(expect),
           "diff": diff, "scale": scale,
           "sharded": sharded, "local_V_rows": model[0].V.to_local().shape[0],
           "lora_weight_changed": not torch.equal(got["4.weight"], state["4.weight"]),
           "B_nonzero": bool(got["4.B"].abs().sum() > 0)}
    with open(os.path.join(sys.argv[1], f"fsdp-rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    """
)


def test_fsdp2_on_cpu_gloo_matches_a_single_process_reference(tmp_path):
    """FSDP2 (``fully_shard``) on 2 CPU processes, before and after a switch that
    factorizes two layers and puts a LoRALinear (frozen W + trainable A, B in one unit)
    in place of the third: the gathered weights match one process training on both
    processes' batches."""
    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER)
    _torchrun(str(script), str(tmp_path))
    for r in range(2):
        out = json.loads((tmp_path / f"fsdp-rank{r}.json").read_text())
        assert out["keys"], "gathered state_dict keys differ from the reference's"
        # before the switch: fp32 summation order only
        assert out["pre_diff"] <= 1e-6 * out["scale"], out
        # after it, the truncated SVDs of the two (1e-7-close) weights amplify that a little;
        # a missing gradient reduction would be off by ~1e-2
        assert out["diff"] <= 1e-4 * out["scale"], out
        assert set(out["sharded"].values()) == {"DTensor"}, out["sharded"]
        assert out["local_V_rows"] == 8  # V [16, 8] split in two along dim 0
        assert not out["lora_weight_changed"]  # frozen
        assert out["B_nonzero"]  # the LoRA update trained


def test_single_process_helpers_are_no_ops_and_bad_env_is_named(monkeypatch):
    from torch import nn

    from lowrank_kernels import distributed as D

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert D.env_world() == (0, 1, 0) and not D.is_distributed() and D.is_main_process()
    decision = {"a": 3}
    assert D.broadcast_object(decision) is decision
    assert D.all_reduce_mean(2.5, torch.device("cpu")) == 2.5
    layer = nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    D.broadcast_module_(layer)
    assert torch.equal(layer.weight, before)
    assert D.init_from_env(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK"):
        D.env_world()


def test_the_collective_timeout_reaches_the_process_group(monkeypatch):
    """``TrainConfig.dist_timeout_s`` (CLI ``--dist-timeout``) is the process group's
    timeout, and the default detects a stuck peer within minutes, not half an hour."""
    import datetime

    import lowrank_kernels.distributed as D
    from lowrank_kernels.train import TrainConfig

    assert TrainConfig().dist_timeout_s <= 600
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        D.dist, "init_process_group", lambda backend, timeout: seen.update(b=backend, t=timeout)
    )
    D.init_from_env(torch.device("cpu"), timeout_s=42.0)
    assert seen == {"b": "gloo", "t": datetime.timedelta(seconds=42.0)}


STUCK_PEER = textwrap.dedent(
    """
    import os, signal, sys
    from lowrank_kernels.cli import main
    from lowrank_kernels.train import Trainer

    if os.environ["RANK"] == "1":  # a peer that stops answering mid-run (SIGSTOP, not a crash)
        step = Trainer.train_step
        def stop_at_step_3(self):
            if self.step == 3:
                os.kill(os.getpid(), signal.SIGSTOP)
            return step(self)
        Trainer.train_step = stop_at_step_3
    sys.exit(main([
        "train", "--model", "cnn", "--method", "full", "--steps", "100000", "--device", "cpu",
        "--dist-timeout", "5", "--quiet", "--no-progress",
    ]))
    """
)


def test_a_stopped_peer_fails_the_run_after_the_dist_timeout(tmp_path):
    """A real SIGSTOP on rank 1: rank 0 must give up after ``--dist-timeout`` seconds with a
    one-line error instead of hanging (torchrun then stops the stopped worker)."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_PEER)
    out = _torchrun(str(script), str(tmp_path), expect_rc=None)
    errors = [line for line in out.splitlines() if "lowrank-kernels train: error:" in line]
    assert errors, out[-4000:]
    assert "no answer from a peer process within dist_timeout_s=5 s at step 3" in errors[0]
