"""factorize / merge / restore / summary on an MLP, a small CNN and a tiny GPT-2."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import lowrank_kernels as lrk
from lowrank_kernels import convert
from lowrank_kernels.testing import rel_error

# --- models ----------------------------------------------------------------------------------


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 40), nn.GELU(), nn.Linear(40, 10)
    )


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2),  # grouped: stays dense
            nn.ReLU(),
            nn.Conv2d(2 * width, 32, 1),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).flatten(1))


def tiny_gpt2_config():
    transformers = pytest.importorskip("transformers")
    return transformers, transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_factory():
    transformers, cfg = tiny_gpt2_config()

    def build(seed: int = 0):
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(cfg).eval()

    return build


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ref64(model: nn.Module, x):
    """The dense model's output in float64: the independent reference."""
    m64 = copy.deepcopy(model).double()
    return m64(x.double() if x.is_floating_point() else x)


def np_srank(w: torch.Tensor) -> float:
    w = w.detach().double().reshape(w.shape[0], -1).numpy()
    return np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2


# --- full-rank equivalence -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_full_rank_factorize_reproduces_outputs(kind):
    model = make_mlp() if kind == "mlp" else SmallCNN()
    x = torch.randn(4, 64) if kind == "mlp" else torch.randn(2, 3, 8, 8)
    ref = ref64(model, x)
    ranks = lrk.factorize(model, 1.0, skip_unprofitable=False, rank_multiple=1)
    expected_layers = ["0", "2", "4"] if kind == "mlp" else ["stem", "body.0", "body.4", "head"]
    assert list(ranks) == expected_layers
    for fqn, r in ranks.items():
        layer = model.get_submodule(fqn)
        assert isinstance(layer, (lrk.LowRankLinear, lrk.LowRankConv2d))
        assert r == lrk.convert.full_rank(layer)
    assert rel_error(model(x), ref) < 1e-5
    if kind == "cnn":
        assert isinstance(model.body[2], nn.Conv2d)  # grouped conv left dense


def test_full_rank_factorize_reproduces_gpt2(gpt2_factory):
    transformers = pytest.importorskip("transformers")
    model = gpt2_factory()
    ids = torch.randint(0, 50, (2, 16))
    ref = ref64(model, ids).logits
    ranks = lrk.factorize(model, 1.0, skip_unprofitable=False, rank_multiple=1)
    assert len(ranks) == 8 and all(r == 32 for r in ranks.values())
    assert isinstance(model.transformer.h[0].attn.c_attn, lrk.LowRankLinear)
    assert isinstance(model.lm_head, nn.Linear)  # tied to the embedding: left dense
    assert model.lm_head.weight is model.transformer.wte.weight
    assert rel_error(model(ids).logits, ref) < 1e-5
    # merge gives back Conv1D layers and the original state_dict layout
    lrk.merge(model)
    conv1d = transformers.pytorch_utils.Conv1D
    assert isinstance(model.transformer.h[1].mlp.c_fc, conv1d)
    assert set(model.state_dict()) == set(gpt2_factory().state_dict())
    assert rel_error(model(ids).logits, ref) < 1e-5


# --- parameter counts ------------------------------------------------------------------------


def test_reduced_rank_parameter_counts_mlp():
    model = make_mlp()
    before = n_params(model)
    ranks = lrk.factorize(model, 8)
    # (K, N) = (64, 48), (48, 40): r·(K+N) + N < K·N + N; (40, 10): 8·50 >= 400 → dense
    assert ranks == {"0": 8, "2": 8}
    saved = (64 * 48 - 8 * (64 + 48)) + (48 * 40 - 8 * (48 + 40))
    assert n_params(model) == before - saved
    assert isinstance(model[4], nn.Linear)


def test_reduced_rank_parameter_counts_cnn():
    model = SmallCNN()
    before = n_params(model)
    ranks = lrk.factorize(model, {"body.0": 4, "head": 6})
    assert ranks == {"body.0": 4, "head": 6}
    k_conv = 16 * 9
    saved = (32 * k_conv - 4 * (k_conv + 32)) + (512 * 10 - 6 * (512 + 10))
    assert n_params(model) == before - saved
    assert model.body[0].conv_v.weight.shape == (4, 16, 3, 3)


def test_reduced_rank_parameter_counts_gpt2(gpt2_factory):
    model = gpt2_factory()
    before = n_params(model)
    ranks = lrk.factorize(model, 8)
    # per block: c_attn 32→96, c_proj 32→32, c_fc 32→128, mlp c_proj 128→32
    shapes = [(32, 96), (32, 32), (32, 128), (128, 32)]
    saved = 2 * sum(k * n - 8 * (k + n) for k, n in shapes)
    assert len(ranks) == 8
    assert n_params(model) == before - saved
    ids = torch.randint(0, 50, (1, 8))
    assert torch.isfinite(model(ids).logits).all()


# --- rank forms ------------------------------------------------------------------------------


def test_filter_fn_selects_layers():
    model = make_mlp()
    seen = []

    def only_first(module, fqn):
        seen.append((type(module), fqn))
        return fqn == "0"

    ranks = lrk.factorize(model, 4, filter_fn=only_first)
    assert ranks == {"0": 4}
    assert (nn.Linear, "2") in seen and isinstance(model[2], nn.Linear)
    assert lrk.candidate_layers(make_mlp(), filter_fn=lambda m, f: f != "2").keys() == {"0", "4"}


def test_ratio_rank_is_rounded_up_to_multiple():
    model = make_mlp()
    ranks = lrk.factorize(model, 0.3, skip_unprofitable=False)
    # ceil(0.3·full) rounded up to 8, capped at full: 48→15→16, 40→12→16, 10→3→8
    assert ranks == {"0": 16, "2": 16, "4": 8}
    assert lrk.factorize(make_mlp(), 0.3, skip_unprofitable=False, rank_multiple=1) == {
        "0": 15,
        "2": 12,
        "4": 3,
    }
    assert lrk.factorize(make_mlp(), 0.05, skip_unprofitable=False, min_rank=5,
                         rank_multiple=1) == {"0": 5, "2": 5, "4": 5}  # fmt: skip


def test_explicit_ranks_are_not_rounded():
    assert lrk.factorize(make_mlp(), 5) == {"0": 5, "2": 5, "4": 5}  # 5·50 < 40·10
    assert lrk.factorize(make_mlp(), {"2": 3}) == {"2": 3}
    ranks = lrk.factorize(make_mlp(), lambda fqn, m: None if fqn == "2" else 3)
    assert ranks == {"0": 3, "4": 3}


def test_stable_rank_form_uses_ceil_of_stable_rank():
    model = make_mlp()
    with torch.no_grad():  # give layer 0 a clear low-rank structure
        model[0].weight.copy_(torch.randn(48, 2) @ torch.randn(2, 64))
    expected = {
        f: min(math.ceil(np_srank(model.get_submodule(f).weight)), full)
        for f, full in (("0", 48), ("2", 40), ("4", 10))
    }
    ranks = lrk.factorize(copy.deepcopy(model), "stable", skip_unprofitable=False, rank_multiple=1)
    assert ranks == expected
    ranks8 = lrk.factorize(model, "stable", skip_unprofitable=False)
    assert ranks8 == {f: min(-(-r // 8) * 8, (48, 40, 10)[i]) for i, (f, r) in
                      enumerate(expected.items())}  # fmt: skip


def test_scaled_stable_form_needs_tracker():
    model = make_mlp()
    tracker = lrk.StableRankTracker(model)
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(40, 3) @ torch.randn(3, 48))
    tracker.update()
    expected = {
        f: min(math.ceil(np_srank(model.get_submodule(f).weight) * tracker.xi[f] - 1e-9), full)
        for f, full in (("0", 48), ("2", 40), ("4", 10))
    }
    ranks = lrk.factorize(
        model, "scaled_stable", tracker=tracker, skip_unprofitable=False, rank_multiple=1
    )
    assert ranks == expected
    assert ranks["0"] == 48  # untouched layer: scaled stable rank = full rank
    with pytest.raises(ValueError, match="tracker"):
        lrk.factorize(make_mlp(), "scaled_stable")


@pytest.mark.parametrize(
    ("rank", "kwargs", "exc", "match"),
    [
        (0, {}, ValueError, "rank must be >= 1"),
        (-3, {}, ValueError, "rank must be >= 1"),
        (11, {"skip_unprofitable": False}, ValueError, "'4'.*full rank.*10"),
        ({"2": 41}, {}, ValueError, "'2'.*40"),
        ({"2": 0}, {}, ValueError, "'2'"),
        ({"nope": 4}, {}, ValueError, "'nope'.*candidates"),
        ({"2": 4.0}, {}, TypeError, "'2'.*int"),
        (0.0, {}, ValueError, r"\(0, 1\]"),
        (1.5, {}, ValueError, r"\(0, 1\]"),
        ("huge", {}, ValueError, "stable"),
        (True, {}, TypeError, "bool"),
        (None, {}, TypeError, "rank must be"),
        (lambda fqn, m: 999, {}, ValueError, "rank callable"),
        (4, {"rank_multiple": 0}, ValueError, "rank_multiple"),
        (4, {"min_rank": 0}, ValueError, "min_rank"),
        (4, {"min_speedup": 1.0}, ValueError, "example_input"),
        (4, {"filter_fn": 3}, TypeError, "filter_fn"),
    ],
)
def test_bad_ranks_raise_clear_errors(rank, kwargs, exc, match):
    model = make_mlp()
    with pytest.raises(exc, match=match):
        lrk.factorize(model, rank, **kwargs)
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.GELU))


def test_mapping_naming_an_excluded_layer_says_why():
    model = SmallCNN()
    with pytest.raises(ValueError, match="groups=2"):
        lrk.factorize(model, {"body.2": 4})


def test_int_rank_above_full_keeps_layer_dense_when_skipping():
    model = make_mlp()
    assert lrk.factorize(model, 45) == {}
    notes = {x.fqn: x.reason for x in lrk.summary(model)}
    assert "exceeds the full rank 40" in notes["2"]
    assert "saves no parameters" in notes["0"]


def test_unprofitable_threshold_is_exact():
    # K·N/(K+N) = 64·48/112 = 27.43: rank 27 pays off, rank 28 does not
    model = nn.Sequential(nn.Linear(64, 48))
    assert lrk.factorize(copy.deepcopy(model), 27) == {"0": 27}
    assert lrk.factorize(copy.deepcopy(model), 28) == {}
    assert lrk.factorize(model, 28, skip_unprofitable=False) == {"0": 28}


# --- structure -------------------------------------------------------------------------------


def test_special_layers_are_skipped_with_reasons():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2)
            self.shared = nn.Linear(16, 16)
            self.again = self.shared
            self.emb = nn.Embedding(10, 16)
            self.out = nn.Linear(16, 10, bias=False)
            self.out.weight = self.emb.weight
            self.free = nn.Linear(16, 16)

    net = Net()
    assert list(lrk.candidate_layers(net)) == ["free"]
    reasons = {x.fqn: x.reason for x in lrk.summary(net)}
    assert "MultiheadAttention" in reasons["attn.out_proj"]
    assert "several paths" in reasons["shared"]
    assert "tied" in reasons["out"]
    assert lrk.factorize(nn.Linear(64, 64), 4) == {}  # the model itself cannot be swapped


def test_second_factorize_leaves_lowrank_layers_alone():
    model = SmallCNN()
    first = lrk.factorize(model, 4, rank_multiple=1)
    assert "stem" in first
    second = lrk.factorize(model, 2, skip_unprofitable=False, rank_multiple=1)
    assert not any(f.startswith("stem.") for f in second)  # not inside LowRankConv2d
    assert model.stem.rank == 4


def test_requires_grad_dtype_and_backward():
    model = make_mlp().double()
    model[0].weight.requires_grad_(False)
    lrk.factorize(model, 4)
    assert not model[0].V.requires_grad and not model[0].U.requires_grad
    assert model[0].bias.requires_grad and model[2].V.requires_grad
    assert model[2].V.dtype == torch.float64
    model(torch.randn(3, 64, dtype=torch.float64)).sum().backward()
    assert model[0].V.grad is None and torch.isfinite(model[2].U.grad).all()


# --- merge / restore -------------------------------------------------------------------------


def test_merge_after_full_rank_factorize_reproduces_outputs():
    model = SmallCNN()
    x = torch.randn(2, 3, 8, 8)
    ref = ref64(model, x)
    lrk.factorize(model, 1.0, skip_unprofitable=False, rank_multiple=1)
    assert lrk.merge(model) is model
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert not any(isinstance(m, (lrk.LowRankConv2d, lrk.LowRankLinear)) for m in model.modules())
    assert rel_error(model(x), ref) < 1e-5
    assert set(model.state_dict()) == set(SmallCNN().state_dict())


def test_merge_at_reduced_rank_gives_the_product():
    model = make_mlp()
    lrk.factorize(model, {"0": 5})
    V, U = model[0].V.detach().double(), model[0].U.detach().double()
    lrk.merge(model)
    assert torch.allclose(model[0].weight.double(), (V @ U).t(), atol=1e-6)
    low = lrk.LowRankLinear(6, 4, 2)
    assert isinstance(lrk.merge(low), nn.Linear)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_restore_into_fresh_model_gives_identical_outputs():
    torch.manual_seed(1)
    model = SmallCNN()
    lrk.factorize(model, {"stem": 5, "body.0": 7, "body.4": 3, "head": 9})
    with torch.no_grad():  # pretend training moved the factors
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    torch.manual_seed(2)
    fresh = SmallCNN()
    assert lrk.restore(fresh, _roundtrip(model.state_dict())) is fresh
    assert {x.fqn: x.rank for x in lrk.summary(fresh) if x.rank} == {
        "stem": 5, "body.0": 7, "body.4": 3, "head": 9,
    }  # fmt: skip
    assert torch.equal(fresh(x), expected)


def test_restore_gpt2(gpt2_factory):
    model = gpt2_factory(seed=0)
    lrk.factorize(model, 0.25)
    ids = torch.randint(0, 50, (2, 12))
    expected = model(ids).logits
    fresh = gpt2_factory(seed=5)
    lrk.restore(fresh, _roundtrip(model.state_dict()))
    assert torch.equal(fresh(ids).logits, expected)
    lrk.merge(fresh)  # the restored layers merge back into Conv1D
    transformers = pytest.importorskip("transformers")
    assert isinstance(fresh.transformer.h[0].attn.c_attn, transformers.pytorch_utils.Conv1D)


def test_restore_into_wrong_architecture_fails_and_leaves_model_intact():
    model = SmallCNN(width=16)
    lrk.factorize(model, 4, rank_multiple=1)
    sd = model.state_dict()
    wrong = SmallCNN(width=8)
    with pytest.raises((RuntimeError, ValueError), match="restore"):
        lrk.restore(wrong, sd)
    assert type(wrong.stem) is nn.Conv2d and type(wrong.head) is nn.Linear
    # same layer shapes, one layer missing → unexpected keys
    fewer = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 40))
    mlp = make_mlp()
    lrk.factorize(mlp, 4)
    with pytest.raises(RuntimeError, match="architecture"):
        lrk.restore(fewer, mlp.state_dict())
    assert type(fewer[0]) is nn.Linear
    with pytest.raises(TypeError, match="state_dict"):
        lrk.restore(fewer, [1, 2])


def test_restore_into_a_model_half_fitting_the_state_leaves_every_weight_untouched():
    mlp = make_mlp()
    lrk.factorize(mlp, 4)
    state = dict(mlp.state_dict())
    last = max(k for k in state if k.endswith("bias"))
    state[last] = torch.zeros(state[last].numel() + 1)  # the last layer no longer fits
    fresh = make_mlp()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RuntimeError, match=f"{last} has shape"):
        lrk.restore(fresh, state)
    after = fresh.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_restore_into_a_meta_model_materializes_it():
    torch.manual_seed(0)
    model = SmallCNN()
    lrk.factorize(model, {"stem": 5, "body.0": 7, "head": 9})
    state = _roundtrip(model.state_dict())
    with torch.device("meta"):
        skeleton = SmallCNN()
    lrk.restore(skeleton, state)
    tensors = [*skeleton.parameters(), *skeleton.buffers()]
    assert not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in skeleton.parameters())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(skeleton(x), model(x))


def test_restore_into_a_meta_model_names_tensors_the_state_lacks():
    class WithCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.register_buffer("cache", torch.zeros(3), persistent=False)

    source = WithCache()
    lrk.factorize(source, {"fc": 2})
    with torch.device("meta"):
        skeleton = WithCache()
    with pytest.raises(ValueError, match=r"meta device.*\['cache'\]"):
        lrk.restore(skeleton, source.state_dict())
    assert type(skeleton.fc) is nn.Linear  # left as it was


@pytest.mark.parametrize(
    "wrap,why",
    [
        (nn.utils.parametrizations.weight_norm, "parametrized"),
        (nn.utils.parametrizations.spectral_norm, "parametrized"),
        (lambda m: (m.register_forward_hook(lambda *a: None), m)[1], "forward hooks"),
    ],
    ids=["weight_norm", "spectral_norm", "forward_hook"],
)
def test_layers_whose_behaviour_a_replacement_would_drop_stay_dense(wrap, why):
    torch.manual_seed(0)
    model = nn.Sequential(wrap(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 16)
    expected = model(x)
    lrk.factorize(model, 1.0, rank_multiple=1, skip_unprofitable=False)  # full rank: same math
    assert type(model[2]) is lrk.LowRankLinear
    assert not isinstance(model[0], lrk.LowRankLinear)
    assert why in {r.fqn: r.reason for r in lrk.summary(model)}["0"]
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match=f"layer '0'.*cannot be factorized.*{why}"):
        lrk.factorize(model, {"0": 4})


def test_old_style_weight_norm_hook_is_not_dropped():
    with pytest.warns(FutureWarning):
        layer = nn.utils.weight_norm(nn.Linear(16, 16))
    model = nn.Sequential(layer, nn.Linear(16, 8))
    lrk.factorize(model, 1.0, rank_multiple=1, skip_unprofitable=False)
    assert model[0] is layer and "forward pre-hooks" in lrk.summary(model)[0].reason


# --- summary ---------------------------------------------------------------------------------


def test_summary_counts_and_prints():
    model = SmallCNN()
    lrk.factorize(model, {"body.0": 4})
    s = lrk.summary(model)
    assert [x.fqn for x in s] == ["stem", "body.0", "body.2", "body.4", "head"]
    row = s["body.0"]
    assert (row.kind, row.in_size, row.out_size, row.rank) == ("Conv2d", 144, 32, 4)
    assert row.params_dense == 144 * 32 + 32 and row.params == 4 * (144 + 32) + 32
    assert row.flops_dense == 2 * 144 * 32 and row.flops == 2 * 4 * (144 + 32)
    assert s["body.2"].rank is None and "groups=2" in s["body.2"].reason
    assert s["head"].reason == "not in the rank mapping"
    assert s.total_params == n_params(model)
    assert s.params_dense == n_params(SmallCNN())
    text = str(s)
    assert "body.0" in text and "dense" in text and "1/5 layers low-rank" in text
    assert isinstance(convert.ModelSummary, type)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_factorize_is_atomic_and_names_the_layer_it_cannot_factorize(bad):
    """A non-finite weight in the third layer: a clear error naming it, and the model
    exactly as before (no layer replaced, no record written)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[3].weight[1, 2] = bad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer '3': .*NaN/inf.*left unchanged"):
        lrk.factorize(model, 2)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.Linear]
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, equal_nan=True)
    assert "_lowrank_records" not in model.__dict__


def test_from_linear_and_from_conv2d_refuse_non_finite_weights():
    linear = nn.Linear(6, 5)
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        linear.weight[0, 0] = float("nan")
        conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"from_linear: linear\.weight holds 1 NaN/inf"):
        lrk.LowRankLinear.from_linear(linear, 2)
    with pytest.raises(ValueError, match=r"from_conv2d: conv\.weight holds 1 NaN/inf"):
        lrk.LowRankConv2d.from_conv2d(conv, 2)


# --- PEFT-style selection and the result -----------------------------------------------------


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32)
        self.v_proj = nn.Linear(32, 32)
        self.out = nn.Linear(32, 32)


def _two_blocks() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"b0": Attn(), "b1": Attn()})


def test_target_modules_list_and_regex_select_layers_like_peft():
    model = _two_blocks()
    assert list(lrk.factorize(model, 4, target_modules=["q_proj", "b1.out"])) == [
        "b0.q_proj", "b1.q_proj", "b1.out",
    ]  # fmt: skip
    assert "not in target_modules" in {r.fqn: r.reason for r in lrk.summary(model)}["b0.v_proj"]
    model = _two_blocks()
    assert list(lrk.factorize(model, 4, target_modules=r"b\d\.(q|v)_proj")) == [
        "b0.q_proj", "b0.v_proj", "b1.q_proj", "b1.v_proj",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not a valid regular expression"):
        lrk.factorize(_two_blocks(), 4, target_modules="(")
    with pytest.raises(TypeError, match="target_modules must be"):
        lrk.factorize(_two_blocks(), 4, target_modules=[])


def test_short_names_in_the_rank_mapping_and_a_full_name_wins():
    model = _two_blocks()
    ranks = lrk.factorize(model, {"q_proj": 8, "b1.q_proj": 2, "out": 4})
    assert ranks == {"b0.q_proj": 8, "b0.out": 4, "b1.q_proj": 2, "b1.out": 4}
    with pytest.raises(ValueError, match="neither a factorizable layer"):
        lrk.factorize(_two_blocks(), {"k_proj": 8})


def test_a_rank_callable_may_return_a_ratio():
    model = _two_blocks()
    ranks = lrk.factorize(model, lambda fqn, m: 0.25 if "q_proj" in fqn else None, rank_multiple=1)
    assert ranks == {"b0.q_proj": 8, "b1.q_proj": 8}  # ceil(0.25 · 32)
    with pytest.raises(ValueError, match=r"returned 1\.5"):
        lrk.factorize(_two_blocks(), lambda fqn, m: 1.5)


def test_factorizing_nothing_warns_with_the_reason():
    with pytest.warns(UserWarning, match="every candidate layer stayed dense.*saves no parameters"):
        assert lrk.factorize(_two_blocks(), 1.0) == {}
    with pytest.warns(UserWarning, match="no layer it may factorize"):
        lrk.factorize(nn.Sequential(nn.ReLU()), 4)


def test_the_result_is_not_the_model_and_says_so():
    model = _two_blocks()
    result = lrk.factorize(model, 4)
    assert isinstance(result, dict) and result["b0.q_proj"] == 4
    with pytest.raises(AttributeError, match="changed the model in place"):
        result.parameters()
    with pytest.raises(TypeError, match="changed the model in place"):
        result(torch.randn(2, 32))
