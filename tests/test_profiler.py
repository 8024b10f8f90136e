"""Layer profiler: captured inputs, timer injection, min_speedup decisions (fake timer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels.profiler import LayerTiming, default_timer, profile_layers


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 64)
        self.unused = nn.Linear(64, 64)  # never called by forward

    def forward(self, x, scale: float = 1.0):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h))) * scale


class FakeTimer:
    """Cost model instead of a clock: dense ``K·N``, low-rank ``r·(K+N)·overhead``."""

    def __init__(self, overhead: float) -> None:
        self.overhead = overhead
        self.calls: list[tuple[str, tuple[int, ...], int]] = []

    def __call__(self, module: nn.Module, x: torch.Tensor, repeats: int) -> float:
        self.calls.append((type(module).__name__, tuple(x.shape), repeats))
        _, k, n = lrk.layers.layer_dims(module)
        if isinstance(module, (lrk.LowRankLinear, lrk.LowRankConv2d)):
            return module.rank * (k + n) * self.overhead
        return float(k * n)


def test_profile_layers_captures_real_inputs_and_uses_timer():
    net = Net()
    timer = FakeTimer(overhead=1.0)
    x = torch.randn(2, 3, 8, 8)
    timings = profile_layers(net, x, {"conv": 4, "fc1": 8, "unused": 8}, repeats=3, timer=timer)
    assert set(timings) == {"conv", "fc1"}  # the example input never reaches `unused`
    assert timings["conv"].input_shape == (2, 3, 8, 8)
    assert timings["fc1"].input_shape == (2, 256)
    t = timings["fc1"]
    assert isinstance(t, LayerTiming) and t.rank == 8
    assert t.dense_s == 256 * 64 and t.lowrank_s == 8 * (256 + 64)
    assert t.speedup == pytest.approx(256 * 64 / (8 * 320))
    assert timer.calls == [
        ("Conv2d", (2, 3, 8, 8), 3),
        ("LowRankConv2d", (2, 3, 8, 8), 3),
        ("Linear", (2, 256), 3),
        ("LowRankLinear", (2, 256), 3),
    ]
    # hooks are gone and the model is untouched
    assert not net.fc1._forward_pre_hooks and isinstance(net.fc1, nn.Linear)


def test_capture_run_has_no_side_effects_on_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4))
    net.train()
    net[3].eval()  # a per-module flag that must survive
    stats = net[1].running_mean.clone()
    profile_layers(net, torch.randn(2, 3, 8, 8), {"3": 2}, repeats=1, timer=FakeTimer(1.0))
    assert torch.equal(net[1].running_mean, stats) and net[1].num_batches_tracked == 0
    assert net.training and net[1].training and not net[3].training


def test_example_input_forms():
    net = Net()
    x = torch.randn(1, 3, 8, 8)
    for example in (x, (x, 2.0), {"x": x, "scale": 2.0}):
        timings = profile_layers(net, example, {"fc2": 4}, repeats=1, timer=FakeTimer(1.0))
        assert timings["fc2"].input_shape == (1, 64)


def test_factorize_min_speedup_keeps_slow_layers_dense():
    overhead = 3.0
    net = Net()
    x = torch.randn(2, 3, 8, 8)
    ranks = {"conv": 8, "fc1": 8, "fc2": 16, "unused": 8}
    out = lrk.factorize(
        net, ranks, example_input=x, min_speedup=1.5, timer=FakeTimer(overhead), profile_repeats=2
    )
    # independent cost model: speedup = K·N / (r·(K+N)·overhead) against 1.5
    dims = {"conv": (27, 16), "fc1": (256, 64), "fc2": (64, 64), "unused": (64, 64)}
    speed = {f: k * n / (ranks[f] * (k + n) * overhead) for f, (k, n) in dims.items()}
    expected = {f: ranks[f] for f in ("conv", "fc1", "fc2") if speed[f] >= 1.5}
    expected["unused"] = 8  # not reached by the input: not profiled, factorized as asked
    assert out == expected == {"fc1": 8, "unused": 8}
    assert isinstance(net.conv, nn.Conv2d) and isinstance(net.fc2, nn.Linear)
    rows = {r.fqn: r for r in lrk.summary(net)}
    assert rows["conv"].rank is None and "min_speedup" in rows["conv"].reason
    assert rows["fc1"].dense_s == 256 * 64 and rows["fc1"].lowrank_s == 8 * 320 * overhead
    assert rows["fc1"].speedup == pytest.approx(speed["fc1"])
    assert "not profiled" in rows["unused"].reason
    assert "16384000.000" in str(lrk.summary(net))  # 16384 "s" printed in ms


def test_profiling_without_min_speedup_only_reports():
    net = Net()
    out = lrk.factorize(
        net, {"fc1": 8}, example_input=torch.randn(2, 3, 8, 8), timer=FakeTimer(100.0)
    )
    assert out == {"fc1": 8}
    assert lrk.summary(net)["fc1"].speedup < 1


@pytest.mark.parametrize("backward", [False, True])
def test_default_timer_runs_on_cpu(backward):
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    t = default_timer(layer, x, 3, backward=backward)
    assert math.isfinite(t) and t > 0
    assert layer.weight.grad is None  # timing does not leave gradients behind
    timings = profile_layers(Net(), torch.randn(1, 3, 8, 8), {"fc2": 4}, repeats=2)
    assert timings["fc2"].dense_s > 0 and timings["fc2"].lowrank_s > 0


def test_profile_layers_errors():
    net = Net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="'nope'"):
        profile_layers(net, x, {"nope": 4})
    with pytest.raises(ValueError, match=r"'fc1'.*64"):
        profile_layers(net, x, {"fc1": 65})
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        profile_layers(nn.Sequential(nn.ReLU()), x, {"0": 1})
    with pytest.raises(ValueError, match="repeats"):
        profile_layers(net, x, {"fc1": 4}, repeats=0)
    with pytest.raises(ValueError, match="min_speedup"):
        lrk.factorize(net, 4, example_input=x, min_speedup=-1.0)
