"""GPT: it learns, its cache is exact, its attention weights are proper distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.models import GPT, GPTConfig
from tests.conftest import FP32, FP32_TIGHT


def tiny(**kw) -> GPT:
    base = dict(vocab_size=20, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32)
    base.update(kw)
    return GPT(GPTConfig(**base))


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randint(0, 20, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model(x).logits.reshape(-1, 20), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "alibi"])
@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
def test_cached_forward_equals_full_forward(positions, num_kv_heads):
    model = tiny(positions=positions, num_kv_heads=num_kv_heads).eval()
    x = torch.randint(0, 20, (2, 12))
    full = model(x).logits
    cache = model.new_cache(2)
    parts = [model(x[:, :5], cache=cache).logits] + [model(x[:, t : t + 1], cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **FP32)


def test_attention_weights_are_causal_distributions():
    model = tiny().eval()
    out = model(torch.randint(0, 20, (2, 9)), return_attention=True)
    assert len(out.attentions) == 2
    for w in out.attentions:
        assert w.shape == (2, 4, 9, 9)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9), **FP32_TIGHT)
        assert w.triu(1).abs().max() == 0


def test_tied_embeddings_and_bad_input():
    model = tiny()
    assert model.lm_head.weight is model.token_embedding.weight
    with pytest.raises(ValueError, match="exceed the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must be in"):
        model(torch.full((1, 3), 20))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 3))
