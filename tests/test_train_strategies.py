"""Training strategies on a tiny char GPT: Cuttlefish, ReLoRA, InRank, fixed, Frobenius decay.

References are computed here in float64 numpy/torch from the training-strategies
section of docs/design.md, never read back from the code under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lowrank_kernels import rank as rank_mod
from lowrank_kernels.nn import LoRALinear, LowRankConv2d, LowRankLinear
from lowrank_kernels.testing import rel_error
from lowrank_kernels.train import TrainConfig, Trainer, frobenius_decay_, frobenius_penalty


def tiny_config(method: str, steps: int = 20, lr: float = 1e-2, **strategy_kwargs) -> TrainConfig:
    """A 1-block, 32-wide char GPT on 4×16-token batches: a few ms per step on a CPU."""
    return TrainConfig(
        model="gpt",
        method=method,
        steps=steps,
        batch_size=4,
        lr=lr,
        warmup_steps=2,
        eval_every=1000,
        device="cpu",
        task_kwargs={
            "block_size": 16,
            "eval_batches": 1,
            "model_kwargs": {"n_layer": 1, "n_head": 2, "d_model": 32},
        },
        strategy_kwargs=strategy_kwargs,
    )


def trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def optimizer_ids(opt: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def srank64(w: torch.Tensor) -> float:
    s = np.linalg.svd(w.detach().double().numpy(), compute_uv=False)
    return float((s**2).sum() / s[0] ** 2)


def fixed_batch(trainer: Trainer) -> torch.Tensor:
    return trainer.task.train_batch(10_000, trainer.device)[0]


# ---------------------------------------------------------------------------------------------
# Cuttlefish


@pytest.mark.parametrize("min_switch_step", [0, 13])
def test_cuttlefish_switches_when_converged_and_not_during_warmup(min_switch_step):
    # lr = 0: the weights never move, so every stable-rank series is constant and
    # converges as soon as the detector has enough history; only min_switch_step delays it.
    cfg = tiny_config(
        "cuttlefish",
        steps=30,
        lr=0.0,
        track_every=2,
        span=3,
        window=3,
        tol=0.01,
        min_switch_step=min_switch_step,
        max_switch_step=100,
        profile=False,
    )
    trainer = Trainer(cfg, progress=False, log=None).fit()
    strat = trainer.strategy
    history, measured = strat.tracker.history, strat.measured_at
    assert measured == list(range(2, strat.switch_step + 1, 2))

    def converged_after(n: int) -> bool:
        return rank_mod.all_converged(
            {f: h[:n] for f, h in history.items()}, span=3, window=3, tol=0.01
        )

    first = next(n for n in range(1, len(measured) + 1) if converged_after(n))
    expected = next(s for s in measured[first - 1 :] if s >= min_switch_step)
    assert strat.switch_step == expected
    assert strat.switch_step >= min_switch_step
    assert strat.switch_reason == "stable ranks converged"
    if min_switch_step:
        assert measured[first - 1] < min_switch_step  # converged earlier, held back by warm-up


def test_cuttlefish_switch_structure_ranks_and_optimizer():
    cfg = tiny_config(
        "cuttlefish",
        steps=16,
        track_every=2,
        span=3,
        window=3,
        tol=0.0,  # a training run never has an exactly flat history: use the fallback
        max_switch_step=10,
        rank_multiple=4,
        profile=False,
    )
    initial = {f: m.weight.detach().clone() for f, m in _linears(Trainer(cfg, progress=False))}
    trainer = Trainer(cfg, progress=False, log=None)
    captured: dict[str, torch.Tensor] = {}
    real_switch = trainer.strategy._switch

    def spy(tr, done):
        captured.update({f: m.weight.detach().clone() for f, m in _linears(tr)})
        state_before["opt"] = tr.optimizer
        real_switch(tr, done)

    state_before: dict = {}
    trainer.strategy._switch = spy
    trainer.fit(until=10)
    assert trainer.strategy.switch_step == 10
    assert trainer.strategy.switch_reason == "max_switch_step reached"

    # Expected ranks (docs/design.md, Cuttlefish) in float64: ceil(srank(W_t)·full/srank(W_0)),
    # rounded up to a multiple of 4; layers where r·(K+N) >= K·N stay dense.
    named = dict(trainer.model.named_modules())
    ranks = trainer.strategy.ranks(trainer.model)
    assert ranks, "no layer was factorized"
    for fqn, w_t in captured.items():
        full = min(w_t.shape)
        scaled = srank64(w_t) * full / srank64(initial[fqn])
        options = {min(full, -(-math.ceil(scaled + d) // 4) * 4) for d in (-1e-4, 1e-4)}
        n_out, k_in = w_t.shape
        profitable = {r for r in options if r * (k_in + n_out) < k_in * n_out}
        if fqn in ranks:
            assert ranks[fqn] in profitable
            assert isinstance(named[fqn], LowRankLinear) and named[fqn].rank == ranks[fqn]
        else:
            assert not profitable or options - profitable
            assert isinstance(named[fqn], nn.Linear)

    # The optimizer holds exactly the model's parameters and kept the surviving state.
    opt = trainer.optimizer
    assert opt is not state_before["opt"]
    assert sorted(optimizer_ids(opt)) == sorted(trainable_ids(trainer.model))
    emb = trainer.model.tok_emb.weight
    assert opt.state[emb] is state_before["opt"].state[emb]
    for module in named.values():
        if isinstance(module, LowRankLinear):
            assert module.V not in opt.state  # fresh factors start with fresh moments

    trainer.fit()
    assert trainer.step == 16
    assert all(math.isfinite(v) for v in trainer.losses)


def _linears(trainer: Trainer):
    return [
        (f, m)
        for f, m in trainer.model.named_modules()
        if isinstance(m, nn.Linear) and trainer.task.filter_fn(m, f)
    ]


def test_fixed_factorizes_at_the_ratio_from_step_zero():
    trainer = Trainer(tiny_config("fixed", steps=2, rank=0.5), progress=False, log=None).fit()
    # ceil(0.5·32) = 16 everywhere; attn.proj (32×32) would need r < 16 to save anything.
    assert trainer.strategy.ranks(trainer.model) == {
        "blocks.0.attn.qkv": 16,
        "blocks.0.fc": 16,
        "blocks.0.fc_proj": 16,
    }
    assert isinstance(trainer.model.blocks[0].attn.proj, nn.Linear)
    assert trainer.strategy.switch_step == 0
    assert sorted(optimizer_ids(trainer.optimizer)) == sorted(trainable_ids(trainer.model))


# ---------------------------------------------------------------------------------------------
# Frobenius decay


def _factor_model() -> nn.Module:
    model = nn.Module()
    model.lin = LowRankLinear(12, 9, 3)
    model.conv = LowRankConv2d(3, 5, 3, 2, padding=1)
    return model


def _products64(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    """Float64 leaf copies of every factor and the product ``V·U`` each layer computes."""
    out = {}
    V = model.lin.V.detach().double().requires_grad_()
    U = model.lin.U.detach().double().requires_grad_()
    out["lin"] = (V, U, V @ U)
    cv = model.conv.conv_v.weight.detach().double().requires_grad_()
    cu = model.conv.conv_u.weight.detach().double().requires_grad_()
    out["conv"] = (cv, cu, cu.flatten(1) @ cv.flatten(1))  # [C_out, C_in·k·k]
    return out


def test_frobenius_penalty_and_decoupled_decay_match_float64_autograd():
    model = _factor_model()
    ref = _products64(model)
    penalty = sum(0.5 * p.pow(2).sum() for *_, p in ref.values())
    assert abs(frobenius_penalty(model).item() - penalty.item()) < 1e-5 * penalty.item()
    penalty.backward()
    eta = 0.05
    frobenius_decay_(model, eta)
    (V, U, _), (cv, cu, _) = ref["lin"], ref["conv"]
    assert rel_error(model.lin.V, V - eta * V.grad) < 1e-6
    assert rel_error(model.lin.U, U - eta * U.grad) < 1e-6
    assert rel_error(model.conv.conv_v.weight, cv - eta * cv.grad) < 1e-6
    assert rel_error(model.conv.conv_u.weight, cu - eta * cu.grad) < 1e-6


# ---------------------------------------------------------------------------------------------
# ReLoRA


def test_relora_restart_keeps_output_prunes_moments_by_magnitude():
    trainer = Trainer(tiny_config("relora", rank=4, cycle=100), progress=False, log=None)
    trainer.fit(until=3)
    loras = [m for m in trainer.model.modules() if isinstance(m, LoRALinear)]
    assert len(loras) == 4
    x = fixed_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.model(x)
    moments = {
        (id(p), key): trainer.optimizer.state[p][key].clone()
        for m in loras
        for p in (m.A, m.B)
        for key in ("exp_avg", "exp_avg_sq")
    }
    reported = trainer.strategy.restart(trainer)
    with torch.no_grad():
        after = trainer.model(x)
    assert rel_error(after, before) < 1e-5
    zeros = total = 0
    for m in loras:
        assert torch.count_nonzero(m.B) == 0
        for p in (m.A, m.B):
            for key in ("exp_avg", "exp_avg_sq"):
                new, old = trainer.optimizer.state[p][key], moments[(id(p), key)].abs()
                pruned = new == 0
                zeros += int(pruned.sum())
                total += new.numel()
                # magnitude pruning: everything dropped is no larger than anything kept
                assert old[pruned].max() <= old[~pruned].min()
                assert torch.equal(new[~pruned], moments[(id(p), key)][~pruned])
    assert abs(zeros / total - 0.9) <= 0.02
    assert abs(reported - zeros / total) < 1e-12


def test_relora_factors_get_gradients_after_wrap_and_each_reset():
    cycle = 5
    trainer = Trainer(
        tiny_config("relora", steps=16, rank=4, cycle=cycle, restart_warmup=2),
        progress=False,
        log=None,
    )
    seen: list[dict[str, tuple[bool, bool]]] = []
    while trainer.step < trainer.total_steps:
        trainer.train_step()
        seen.append(
            {
                f: (bool(m.A.grad.abs().max() > 0), bool(m.B.grad.abs().max() > 0))
                for f, m in trainer.model.named_modules()
                if isinstance(m, LoRALinear)
            }
        )
        if trainer.step % cycle == 0:  # a restart just happened in after_step
            for m in trainer.model.modules():
                if isinstance(m, LoRALinear):
                    assert torch.count_nonzero(m.B) == 0
    assert trainer.strategy.restarts == [5, 10, 15]
    for start in (0, 5, 10):  # wrap at step 0, restarts after steps 5 and 10
        for fqn in seen[start]:
            a_any = seen[start][fqn][0] or seen[start + 1][fqn][0]
            b_any = seen[start][fqn][1] or seen[start + 1][fqn][1]
            assert a_any and b_any, (start, fqn)
    assert sorted(optimizer_ids(trainer.optimizer)) == sorted(trainable_ids(trainer.model))
    frozen = [m.weight for m in trainer.model.modules() if isinstance(m, LoRALinear)]
    assert all(id(w) not in set(optimizer_ids(trainer.optimizer)) for w in frozen)


def test_relora_schedule_rewarms_after_each_restart():
    cycle, rewarm_steps, total = 6, 3, 30
    cfg = tiny_config("relora", steps=total, rank=4, cycle=cycle, restart_warmup=rewarm_steps)
    relora = Trainer(cfg, progress=False, log=None)
    relora.strategy.setup(relora)
    full = Trainer(tiny_config("full", steps=total), progress=False, log=None)
    f = [relora.strategy.lr_factor(s, relora) for s in range(total)]
    base = [full.strategy.lr_factor(s, full) for s in range(total)]
    assert f[:cycle] == base[:cycle]  # the first cycle follows the plain warm-up + cosine
    for restart in range(cycle, total, cycle):
        assert 0 < f[restart] < f[restart - 1]  # drops at the restart, never to zero
        ramp = f[restart : restart + rewarm_steps]
        assert all(a < b for a, b in itertools.pairwise(ramp))  # rises again
        for s in range(restart + rewarm_steps, min(restart + cycle, total)):
            assert f[s] == pytest.approx(base[s], rel=1e-12)  # back on the cosine


def test_relora_warm_start_wraps_later_and_rebuilds_the_optimizer():
    trainer = Trainer(
        tiny_config("relora", steps=8, rank=4, cycle=100, warm_start_steps=3),
        progress=False,
        log=None,
    )
    trainer.fit(until=2)
    assert not any(isinstance(m, LoRALinear) for m in trainer.model.modules())
    trainer.fit(until=3)
    assert trainer.strategy.switch_step == 3
    assert sum(isinstance(m, LoRALinear) for m in trainer.model.modules()) == 4
    assert sorted(optimizer_ids(trainer.optimizer)) == sorted(trainable_ids(trainer.model))
    trainer.fit()
    assert all(math.isfinite(v) for v in trainer.losses)


# ---------------------------------------------------------------------------------------------
# InRank


def test_inrank_rank_never_decreases_and_freezes():
    cfg = tiny_config("inrank", steps=16, init_rank=1, buffer=2, gap=2, warmup=2, growth_steps=12)
    trainer = Trainer(cfg, progress=False, log=None)
    history = []
    while trainer.step < trainer.total_steps:
        trainer.train_step()
        ranks = trainer.strategy.ranks(trainer.model)
        modules = dict(trainer.model.named_modules())
        for fqn, r in ranks.items():
            assert modules[fqn].rank >= r  # capacity = rank + buffer during growth
            if trainer.step >= 12:
                assert modules[fqn].rank == r  # frozen at the rank
        history.append(ranks)
    for before, after in itertools.pairwise(history):
        assert all(after[f] >= before[f] for f in before)
    assert any(history[-1][f] > 1 for f in history[-1]), "no layer grew: the test proves nothing"
    assert trainer.strategy.switch_step == 12
    assert sorted(optimizer_ids(trainer.optimizer)) == sorted(trainable_ids(trainer.model))


def _set_spectrum(module: LowRankLinear, s: list[float], seed: int = 0) -> torch.Tensor:
    """Give ``module`` the product ``A·diag(s)·Bᵀ`` with random orthonormal A, B (float64)."""
    g = torch.Generator().manual_seed(seed)
    K, N, r = module.in_features, module.out_features, module.rank
    A = torch.linalg.qr(torch.randn(K, r, generator=g, dtype=torch.float64))[0]
    B = torch.linalg.qr(torch.randn(N, r, generator=g, dtype=torch.float64))[0]
    sv = torch.tensor(s + [0.0] * (r - len(s)), dtype=torch.float64)
    with torch.no_grad():
        module.V.copy_(A * sv)
        module.U.copy_(B.t())
    return (A * sv) @ B.t()


def _explained_rank64(product: torch.Tensor, capacity: int, threshold: float = 0.9) -> int:
    """Smallest k with ``1 − Var(s − s_k)/Var(s) > threshold`` (docs/design.md, InRank),
    numpy float64, over the ``capacity`` singular values of a rank-``capacity`` product."""
    s = np.linalg.svd(product.detach().double().numpy(), compute_uv=False)[:capacity]
    for k in range(1, len(s) + 1):
        tail = s.copy()
        tail[:k] = 0
        if 1 - np.var(tail) / np.var(s) > threshold:
            return k
    return len(s)


def test_inrank_growth_follows_the_explained_ratio_and_keeps_the_function():
    cfg = tiny_config("inrank", init_rank=2, buffer=4, gap=5, warmup=5, growth_steps=50)
    trainer = Trainer(cfg, progress=False, log=None)
    trainer.strategy.setup(trainer)
    trainer.rebuild_optimizer()
    fc = trainer.model.blocks[0].fc
    assert isinstance(fc, LowRankLinear) and fc.rank == 6
    # Over its 6 singular values this spectrum needs all 6 (k = 6 > init_rank 2: growth);
    # counting the product's 26 structural zeros too would wrongly give 5.
    product = _set_spectrum(fc, [3.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    k = _explained_rank64(product, 6)
    assert k == 6
    qkv = trainer.model.blocks[0].attn.qkv  # a rank-1 spectrum must not shrink rank 2
    assert _explained_rank64(_set_spectrum(qkv, [1.0]), 6) == 1
    x = fixed_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.model(x)
    assert trainer.strategy.after_step(trainer, 5) is True
    new_fc = trainer.model.blocks[0].fc
    assert trainer.strategy.current["blocks.0.fc"] == k
    assert trainer.strategy.current["blocks.0.attn.qkv"] == 2
    assert trainer.model.blocks[0].attn.qkv is qkv  # untouched: no growth, no shrink
    assert new_fc.rank == k + 4
    with torch.no_grad():
        assert rel_error(trainer.model(x), before) < 1e-6
    # between update steps nothing changes
    assert trainer.strategy.after_step(trainer, 6) is False


def test_inrank_freeze_truncates_to_the_rank_and_preserves_an_exact_low_rank_function():
    cfg = tiny_config("inrank", init_rank=3, buffer=3, gap=5, warmup=5, growth_steps=7)
    trainer = Trainer(cfg, progress=False, log=None)
    trainer.strategy.setup(trainer)
    trainer.rebuild_optimizer()
    exact = trainer.model.blocks[0].fc  # product of rank 3 = its InRank rank: freeze is exact
    _set_spectrum(exact, [3.0, 2.0, 1.0])
    general = trainer.model.blocks[0].fc_proj  # full spectrum: freeze = best rank-3 approx
    product = _set_spectrum(general, [3.0, 2.5, 2.0, 1.5, 1.0, 0.5], seed=1)
    x = fixed_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        fc_in = trainer.model.blocks[0].ln2(torch.randn(5, 32))
        before_fc = exact(fc_in)
    assert trainer.strategy.after_step(trainer, 7) is True
    assert trainer.strategy.switch_step == 7
    frozen_fc, frozen_proj = trainer.model.blocks[0].fc, trainer.model.blocks[0].fc_proj
    assert frozen_fc.rank == frozen_proj.rank == 3
    with torch.no_grad():
        assert rel_error(frozen_fc(fc_in), before_fc) < 1e-4
    U64, S64, Vh64 = torch.linalg.svd(product)
    best = (U64[:, :3] * S64[:3]) @ Vh64[:3]
    got = frozen_proj.V.detach().double() @ frozen_proj.U.detach().double()
    assert rel_error(got, best) < 1e-4
    with torch.no_grad():
        assert torch.isfinite(trainer.model(x)).all()
