"""``transformers.Trainer`` integration on a tiny random-init GPT-2 (nothing downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

import lowrank_kernels as lrk
from lowrank_kernels.nn import LowRankLinear
from lowrank_kernels.train.schedule import rewarm, warmup_cosine

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it
from lowrank_kernels.integrations.hf import (  # noqa: E402
    LowRankTrainer,
    from_pretrained_lowrank,
)

VOCAB, SEQ = 64, 16


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    """A learnable toy language: each sequence counts up modulo VOCAB from a random start."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (starts + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Recorder(transformers.TrainerCallback):
    """Records the LR used by each optimizer step, and a factor after each step."""

    def __init__(self, trainer) -> None:
        self.trainer, self.lrs, self.factor = trainer, [], {}

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        gpt2 = getattr(self.trainer.model, "transformer", None)
        layer = gpt2.h[0].mlp.c_fc if gpt2 is not None else None
        if isinstance(layer, LowRankLinear):
            self.factor[state.global_step] = layer.V.detach().clone()


def test_trainer_switches_rebuilds_optimizer_and_keeps_training(tmp_path):
    steps, switch = 14, 6
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
        learning_rate=5e-3, warmup_steps=2, weight_decay=0.01, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )  # fmt: skip
    model = tiny_gpt2()
    trainer = LowRankTrainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        strategy="cuttlefish",
        # measured every 2 steps; tol=1e9 converges as soon as the detector has its
        # minimum history (3 measurements: step 6)
        strategy_kwargs={"track_every": 2, "span": 2, "window": 2, "tol": 1e9,
                         "max_switch_step": 10, "rank_multiple": 4, "profile": False},
    )  # fmt: skip
    rec = Recorder(trainer)
    trainer.add_callback(rec)
    trainer.train()

    strategy = trainer.lowrank_strategy
    assert strategy.switch_step == switch and trainer.lowrank_callback.structure_changes == [6]
    ranks = strategy.ranks(trainer.model)
    # at width 64 only layers where r·(K+N) < K·N are worth factorizing (the MLP ones)
    assert ranks == strategy.switch_ranks and "transformer.h.0.mlp.c_fc" in ranks
    assert all(r % 4 == 0 for r in ranks.values())
    named = dict(trainer.model.named_modules())
    assert all(isinstance(named[f], LowRankLinear) and named[f].rank == r for f, r in ranks.items())
    # the optimizer holds exactly the current trainable parameters (no stale dense weights)
    opt = trainer.optimizer.optimizer  # inside accelerate's wrapper
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    # surviving parameters kept their Adam state through the rebuild: all 14 steps counted
    wte = trainer.model.transformer.wte.weight
    assert int(opt.state[wte]["step"]) == steps
    c_fc = trainer.model.transformer.h[0].mlp.c_fc
    assert int(opt.state[c_fc.V]["step"]) == steps - switch
    # the factors keep training after the switch
    assert not torch.equal(rec.factor[switch], rec.factor[steps])
    # the LR: warm-up + cosine, times a linear re-warm-up after the switch (independent formula)
    assert len(rec.lrs) == steps
    for step, lr in enumerate(rec.lrs):
        expected = 5e-3 * warmup_cosine(step, steps, 2, 0.1) * rewarm(step, switch, 2)
        assert math.isclose(lr, expected, rel_tol=1e-9), (step, lr, expected)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]

    # save_pretrained -> from_pretrained_lowrank (through lrk.restore): identical logits
    trainer.model.save_pretrained(tmp_path / "saved")
    loaded = from_pretrained_lowrank(transformers.GPT2LMHeadModel, tmp_path / "saved")
    assert strategy.ranks(loaded) == ranks
    ids = Tokens(4).ids
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trainer.model(ids).logits)
    # tied head survives the round trip
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_factorize_hf_model_round_trip_without_trainer(tmp_path):
    model = tiny_gpt2(1).eval()
    ranks = lrk.factorize(model, 0.25, rank_multiple=1)
    assert set(ranks) == {
        f"transformer.h.{i}.{n}"
        for i in range(2)
        for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_lowrank(transformers.GPT2LMHeadModel, tmp_path)
    ids = Tokens(2).ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        from_pretrained_lowrank(transformers.GPT2LMHeadModel, tmp_path / "missing")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="method must be one of"):
        LowRankTrainer(model=tiny_gpt2(), args=args, strategy="nope")


def test_relora_restarts_inside_the_hf_trainer(tmp_path):
    """ReLoRA needs nn.Linear layers: a tiny random Llama. Restarts merge into W, re-draw A,
    zero B and prune the unwrapped optimizer's moments; the LR is the jagged cosine."""
    from lowrank_kernels.nn import LoRALinear
    from lowrank_kernels.train.schedule import jagged_cosine

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    steps = 9
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
        learning_rate=5e-3, warmup_steps=2, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = LowRankTrainer(
        model=model, args=args, train_dataset=Tokens(), strategy="relora",
        strategy_kwargs={"rank": 4, "cycle": 4, "restart_warmup": 2, "prune_ratio": 0.9},
    )  # fmt: skip
    rec = Recorder(trainer)
    trainer.add_callback(rec)
    w_before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer.train()

    strategy = trainer.lowrank_strategy
    lora = [m for m in trainer.model.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == 8  # q, k, v, o, gate, up, down and the (untied) lm_head
    assert strategy.restarts == [4, 8]
    # the moments of A and B at the last restart: floor(0.9·n) of each tensor zeroed
    # (the smallest tensors have n = 4·32 = 128 entries)
    assert strategy.pruned_fraction is not None
    assert 0.9 - 1 / 128 <= strategy.pruned_fraction < 1.0
    up = trainer.model.model.layers[0].mlp.up_proj
    assert isinstance(up, LoRALinear)
    assert not torch.equal(up.weight, w_before)  # the merges reached the frozen weight
    opt = trainer.optimizer.optimizer
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert id(up.weight) not in in_opt and id(up.A) in in_opt
    for step, lr in enumerate(rec.lrs):
        expected = 5e-3 * jagged_cosine(step, steps, 2, 0.1, start=0, cycle=4, restart_warmup=2)
        assert math.isclose(lr, expected, rel_tol=1e-9), (step, lr, expected)


def _vision(cls_name: str, config_name: str):
    config = getattr(transformers, config_name)(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=8,
    )  # fmt: skip
    model = getattr(transformers, cls_name)(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    return model, lambda: model(pixel_values=pixels).last_hidden_state


def _t5():
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    ids = torch.randint(0, 64, (2, 5))
    return model, lambda: model(input_ids=ids, decoder_input_ids=ids).logits


@pytest.mark.parametrize(
    "build",
    [
        _t5,
        lambda: _vision("ViTModel", "ViTConfig"),
        lambda: _vision("CLIPVisionModel", "CLIPVisionConfig"),
        lambda: _vision("SiglipVisionModel", "SiglipVisionConfig"),
    ],
    ids=["t5", "vit", "clip_vision", "siglip_vision"],
)
def test_models_that_read_layer_weights_run_after_factorize(build):
    """T5 and the vision towers read ``<layer>.weight.dtype`` in forward; at full rank the
    factorized model must give the dense model's output."""
    torch.manual_seed(0)
    model, run = build()
    expected = run()
    ranks = lrk.factorize(model, 1.0, rank_multiple=1, skip_unprofitable=False)
    assert ranks
    torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4)
