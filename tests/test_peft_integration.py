"""PEFT and factorized models: ``factorize`` leaves PEFT adapter layers alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowrank_kernels as lrk

peft = pytest.importorskip("peft")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32)
        self.v_proj = nn.Linear(32, 32)
        self.out = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.q_proj(x) + self.v_proj(x)))


def test_factorize_on_a_peft_model_never_touches_the_adapter_layers(tmp_path):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    model = peft.get_peft_model(Block(), config)
    adapter_before = {k: v.clone() for k, v in peft.get_peft_model_state_dict(model).items()}
    x = torch.randn(3, 32)
    expected = model(x)
    ranks = lrk.factorize(model, 1.0, rank_multiple=1, skip_unprofitable=False)
    assert sorted(ranks) == ["base_model.model.out", "base_model.model.v_proj"]
    reasons = {r.fqn: r.reason for r in lrk.summary(model)}
    assert "PEFT adapter layer" in reasons["base_model.model.q_proj.base_layer"]
    assert "PEFT adapter layer" in reasons["base_model.model.q_proj.lora_A.default"]
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)  # full rank: same
    # The adapter is saved under the same names and loads back onto a fresh base model.
    adapter_after = peft.get_peft_model_state_dict(model)
    assert adapter_after.keys() == adapter_before.keys()
    assert all(torch.equal(adapter_after[k], adapter_before[k]) for k in adapter_before)
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(Block(), tmp_path)
    loaded = peft.get_peft_model_state_dict(reloaded)
    assert all(torch.equal(loaded[k], adapter_before[k]) for k in adapter_before)
