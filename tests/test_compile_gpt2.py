"""``torch.compile(fullgraph=True)`` of a factorized Hugging Face GPT-2 matches eager.

``fullgraph=True`` turns any graph break into an error, so passing means the whole
model — including every ``lowrank_linear`` call — is one graph. Inductor is checked in
the forward pass (the real CPU code generation); ``aot_eager`` checks forward + backward
through the op's autograd registration cheaply, and that an in-place switch (dense →
factorized, as Cuttlefish does) recompiles instead of running the stale graph.
"""

from __future__ import annotations

import pytest
import torch

import lowrank_kernels as lrk

transformers = pytest.importorskip("transformers")


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=128,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_inductor_fullgraph_forward_matches_eager():
    model = tiny_gpt2().eval()
    ranks = lrk.factorize(model, 0.25, rank_multiple=1)
    assert len(ranks) == 8  # 4 Conv1D per block; lm_head is tied and stays dense
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True, backend="inductor")(ids).logits
    assert compiled.shape == eager.shape == (2, 16, 128)
    # fp32 re-association by the generated code only
    assert _rel(compiled, eager) < 1e-5


def test_fullgraph_training_step_matches_eager_and_switch_recompiles():
    from torch._dynamo.testing import CompileCounterWithBackend

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))

    def loss_and_grads(model, fn):
        model.zero_grad(set_to_none=True)
        # the loss outside the model: GPT-2's own loss path logs a warning, an unrelated
        # graph break in transformers
        logits = fn(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model = tiny_gpt2().train()
    model.config.dropout = 0.0
    for m in model.modules():  # dropout would draw different masks in the two runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    compiled(input_ids=ids)
    assert counter.frame_count == 1  # the dense model: one graph

    lrk.factorize(model, 0.25, rank_multiple=1)  # the switch, in place
    eager_loss, eager_grads = loss_and_grads(model, model)
    loss, grads = loss_and_grads(model, compiled)
    # new module types and parameters fail the guards: exactly one recompilation, no break
    assert counter.frame_count == 2
    assert torch.allclose(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(eager_grads) and any(n.endswith(".V") for n in grads)
    for name, g in grads.items():
        assert _rel(g, eager_grads[name]) < 1e-4, name
