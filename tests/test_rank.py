"""Rank selection: stable rank vs numpy, spectrum-based ranks, rounding, convergence, tracker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels import rank as R


def np_srank(W: np.ndarray) -> float:
    W = W.reshape(W.shape[0], -1)
    return np.linalg.norm(W, "fro") ** 2 / np.linalg.norm(W, 2) ** 2


WEIGHTS = {
    "random": lambda: torch.randn(40, 24),
    "low_rank": lambda: torch.randn(40, 3) @ torch.randn(3, 24),
    "conv": lambda: torch.randn(16, 8, 3, 3),
    "wide": lambda: torch.randn(7, 90),
}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_stable_rank_matches_numpy(name):
    W = WEIGHTS[name]()
    expected = np_srank(W.double().numpy())
    assert R.stable_rank(W) == pytest.approx(expected, rel=1e-5)
    assert R.stable_rank(W.double()) == pytest.approx(expected, rel=1e-12)
    assert lrk.stable_rank is R.stable_rank


def test_stable_rank_of_low_rank_and_rank_one():
    assert R.stable_rank(torch.randn(40, 3) @ torch.randn(3, 24)) <= 3 + 1e-5
    u, v = torch.randn(30, 1), torch.randn(1, 20)
    assert R.stable_rank(u @ v) == pytest.approx(1.0, rel=1e-5)
    assert R.stable_rank(torch.eye(12)) == pytest.approx(12.0, rel=1e-6)
    assert R.stable_rank(torch.zeros(5, 4)) == 0.0


def test_stable_ranks_batched_keeps_order_and_matches_numpy():
    ws = [WEIGHTS[n]() for n in ("random", "conv", "random", "wide", "low_rank", "conv")]
    out = R.stable_ranks(ws)
    assert out.shape == (6,) and out.dtype == torch.float32
    for i, w in enumerate(ws):
        assert out[i].item() == pytest.approx(np_srank(w.double().numpy()), rel=1e-5)
    assert R.stable_ranks([]).numel() == 0


def test_stable_rank_rejects_non_finite_and_bad_dims():
    w = torch.randn(6, 5)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        R.stable_rank(w)
    good = torch.randn(6, 5)
    inf = torch.randn(6, 5)
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        R.stable_ranks([good, inf])
    with pytest.raises(ValueError, match="2-D"):
        R.stable_rank(torch.randn(5))
    with pytest.raises(TypeError):
        R.stable_rank([[1.0, 2.0]])


def test_module_weight_matrix_and_full_rank():
    lin = nn.Linear(12, 5)
    assert torch.equal(R.module_weight_matrix(lin), lin.weight.detach())
    conv = nn.Conv2d(3, 8, (3, 2))
    assert torch.equal(R.module_weight_matrix(conv), conv.weight.detach().reshape(8, 18))
    low = lrk.LowRankLinear(12, 5, 3)
    expected = (low.V.detach().double() @ low.U.detach().double()).t()
    assert torch.allclose(R.module_weight_matrix(low).double(), expected, atol=1e-6)
    lowc = lrk.LowRankConv2d(3, 8, 3, rank=2)
    u, v = lowc.conv_u.weight.detach(), lowc.conv_v.weight.detach()
    expected = u.reshape(8, 2) @ v.reshape(2, 27)
    assert torch.allclose(R.module_weight_matrix(lowc), expected, atol=1e-6)
    assert [R.full_rank(m) for m in (lin, conv, low, lowc)] == [5, 8, 5, 8]
    expected_srank = np_srank(lin.weight.detach().double().numpy())
    assert R.stable_rank(lin) == pytest.approx(expected_srank, rel=1e-5)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        R.full_rank(nn.ReLU())


def test_energy_rank():
    s = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    energy = s**2 / (s**2).sum()
    for fraction in (0.1, 0.7, 0.9, 0.97, 0.999, 1.0):
        expected = next(r for r in range(1, 6) if energy[:r].sum() >= fraction - 1e-15)
        assert R.energy_rank(torch.tensor(s), fraction) == expected
    assert R.energy_rank(s[::-1].copy(), 0.7) == R.energy_rank(s, 0.7)  # order does not matter
    assert R.energy_rank([0.0, 0.0], 0.5) == 1
    with pytest.raises(ValueError, match="fraction"):
        R.energy_rank(s, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        R.energy_rank(s, 1.5)
    with pytest.raises(ValueError, match="singular_values"):
        R.energy_rank([1.0, -2.0], 0.5)


def test_explained_ratio_matches_inrank_formula():
    rng = np.random.default_rng(0)
    s = np.sort(rng.exponential(size=30))[::-1].copy()
    for k in (0, 1, 4, 10, 29, 30):
        s_k = np.where(np.arange(30) < k, s, 0.0)
        expected = 1.0 - np.var(s - s_k) / np.var(s)
        assert R.explained_ratio(torch.tensor(s), k) == pytest.approx(expected, abs=1e-12)
    for threshold in (0.5, 0.9, 0.99):
        brute = next(
            k
            for k in range(1, 31)
            if 1.0 - np.var(s - np.where(np.arange(30) < k, s, 0.0)) / np.var(s) > threshold
        )
        assert R.explained_ratio_rank(s, threshold) == brute
    flat = np.ones(6)
    assert R.explained_ratio(flat, 3) == 0.0 and R.explained_ratio(flat, 6) == 1.0
    assert R.explained_ratio_rank(flat) == 6
    with pytest.raises(ValueError, match="threshold"):
        R.explained_ratio_rank(s, 1.0)
    with pytest.raises(ValueError, match="k must be"):
        R.explained_ratio(s, 31)


@pytest.mark.parametrize(
    ("rank", "multiple", "full", "expected"),
    [
        (5, 8, None, 8),
        (8, 8, None, 8),
        (9, 8, None, 16),
        (30, 8, 28, 28),
        (0.3, 8, None, 8),
        (3, 1, None, 3),
        (5, 8, 4, 4),
        (17.2, 16, 100, 32),
        (0, 8, 5, 5),
    ],
)
def test_round_rank(rank, multiple, full, expected):
    assert R.round_rank(rank, multiple, full) == expected


def test_round_rank_errors():
    with pytest.raises(ValueError, match="multiple"):
        R.round_rank(5, 0)
    with pytest.raises(ValueError, match="full_rank"):
        R.round_rank(5, 8, 0)
    with pytest.raises(TypeError, match="rank"):
        R.round_rank(float("nan"))


# --- convergence ---------------------------------------------------------------------------


def reference_mean_abs_derivative(values, span, window):
    """Closed-form EMA (α = 2/(span+1), seeded with x_0) and np.gradient, as in Cuttlefish."""
    x = np.asarray(values, dtype=np.float64)
    a = 2.0 / (span + 1)
    ema = np.array(
        [
            (1 - a) ** t * x[0] + sum(a * (1 - a) ** (t - i) * x[i] for i in range(1, t + 1))
            for t in range(len(x))
        ]
    )
    return np.abs(np.gradient(ema))[-window:].mean()


def test_detector_statistic_matches_reference():
    rng = np.random.default_rng(1)
    values = np.cumsum(rng.normal(size=25))
    det = R.ConvergenceDetector()
    for v in values:
        det.update(v)
    assert det.mean_abs_derivative() == pytest.approx(
        reference_mean_abs_derivative(values, 15, 11), rel=1e-10
    )


def test_detector_fires_on_converging_history():
    rng = np.random.default_rng(2)
    t = np.arange(80)
    values = 12 + 30 * np.exp(-t / 6) + rng.normal(scale=0.01, size=t.size)
    det = R.ConvergenceDetector(span=15, window=11, tol=0.1)
    fired = [det.update(v) for v in values]
    assert fired[-1] and det.converged
    first = fired.index(True) + 1  # number of values seen when it fired
    assert first >= 16
    # it fires exactly when the reference statistic first drops to the tolerance
    expected = next(
        n for n in range(16, 81) if reference_mean_abs_derivative(values[:n], 15, 11) <= 0.1
    )
    assert first == expected == det.converged_at


def test_detector_never_fires_on_drifting_history():
    det = R.ConvergenceDetector()
    rng = np.random.default_rng(3)
    for i in range(200):
        assert not det.update(0.5 * i + rng.normal(scale=0.05))
    assert det.mean_abs_derivative() > 0.1


@pytest.mark.parametrize("warmup", [0, 30])
def test_detector_never_fires_before_warmup(warmup):
    det = R.ConvergenceDetector(span=15, window=11, tol=0.1, warmup=warmup)
    needed = max(16, warmup)
    for n in range(1, 60):
        fired = det.update(5.0)  # flat: the statistic is 0 from the start
        assert fired == (n >= needed)


def test_detector_latches_and_resets():
    det = R.ConvergenceDetector(span=3, window=3, tol=0.1)
    for _ in range(5):
        det.update(1.0)
    assert det.converged
    assert det.update(100.0)  # a later jump does not un-converge (as in Cuttlefish)
    det.reset()
    assert not det.converged and det.values == []
    with pytest.raises(ValueError, match="span"):
        R.ConvergenceDetector(span=0)
    with pytest.raises(ValueError, match="tol"):
        R.ConvergenceDetector(tol=-1.0)
    with pytest.raises(ValueError, match="finite"):
        det.update(float("nan"))


def test_all_converged():
    t = np.arange(60)
    converging = list(8 + 10 * np.exp(-t / 5))
    drifting = list(0.3 * t)
    assert R.all_converged({"a": converging, "b": converging[:]})
    assert not R.all_converged({"a": converging, "b": drifting})
    assert not R.all_converged({"a": converging[:10]})
    with pytest.raises(ValueError, match="empty"):
        R.all_converged({})


# --- tracker ---------------------------------------------------------------------------------


def _mlp():
    return nn.Sequential(
        nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def test_tracker_records_xi_and_history():
    model = _mlp()
    tracker = lrk.StableRankTracker(model)
    assert tracker.fqns == ["0", "2", "4"]
    for fqn, full in (("0", 24), ("2", 16), ("4", 4)):
        w = model.get_submodule(fqn).weight.detach().double().numpy()
        assert tracker.xi[fqn] == pytest.approx(full / np_srank(w), rel=1e-5)
    # at t = 0 the scaled stable rank is the full rank
    assert tracker.scaled_ranks(rank_multiple=1) == {"0": 24, "2": 16, "4": 4}
    first = tracker.update()
    assert tracker.history == {f: [v] for f, v in first.items()}
    # make layer "0" rank 2: the scaled rank follows ceil(srank·ξ), rounded to 8
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(32, 2) @ torch.randn(2, 24))
    tracker.update()
    assert all(len(h) == 2 for h in tracker.history.values())
    new = np_srank(model[0].weight.detach().double().numpy())
    expected = math.ceil(new * 24 / tracker.initial["0"])
    assert tracker.scaled_ranks(rank_multiple=1)["0"] == expected
    assert tracker.scaled_ranks(rank_multiple=8)["0"] == min(-(-expected // 8) * 8, 24)
    assert not tracker.converged()


def test_tracker_filter_and_survives_factorize():
    model = _mlp()
    tracker = lrk.StableRankTracker(model, filter_fn=lambda m, fqn: fqn != "4")
    assert tracker.fqns == ["0", "2"]
    lrk.factorize(model, {"0": 8}, skip_unprofitable=False)
    ranks = tracker.update()
    product = (model[0].V.detach().double() @ model[0].U.detach().double()).t().numpy()
    assert ranks["0"] == pytest.approx(np_srank(product), rel=1e-4)
    with pytest.raises(ValueError, match="no Linear"):
        lrk.StableRankTracker(nn.Sequential(nn.ReLU()))
    zero = nn.Sequential(nn.Linear(3, 3))
    nn.init.zeros_(zero[0].weight)
    with pytest.raises(ValueError, match="all-zero"):
        lrk.StableRankTracker(zero)
