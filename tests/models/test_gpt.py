"""GPT: it learns, its cache is exact, its attention weights are proper distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.errors import ConfigError, ShapeError
from qkv.models import GPT, GPTConfig
from qkv.models.gpt import POSITIONS
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


@pytest.mark.parametrize("positions", POSITIONS)
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


@pytest.mark.parametrize("positions", POSITIONS)
def test_packed_documents_compute_exactly_what_each_document_computes_alone(positions):
    """data.pack: a row of three documents with document_ids gives each document's own logits and the same
    gradients as running them one by one (positions restart, no token sees another document)."""
    torch.manual_seed(0)
    model = tiny(positions=positions, max_seq_len=32).double()
    docs = [torch.randint(0, 20, (1, n)) for n in (5, 9, 4)]
    packed = torch.cat(docs, dim=1)
    document_ids = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], dim=1)
    logits = model(packed, document_ids=document_ids).logits
    alone = torch.cat([model(d).logits for d in docs], dim=1)
    torch.testing.assert_close(logits, alone, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(logits)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad((logits * upstream).sum(), params, allow_unused=True)
    want = torch.autograd.grad((alone * upstream).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_document_ids_are_checked():
    model = tiny()
    ids = torch.randint(0, 20, (2, 8))
    with pytest.raises(ShapeError, match=r"document_ids must be integer \(batch, seq\) = \(2, 8\)"):
        model(ids, document_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ConfigError, match="cannot be combined with a cache"):
        model(ids, document_ids=torch.zeros_like(ids), cache=model.new_cache(2))


def test_t5_relative_bias_learns_and_is_one_table_for_all_layers():
    torch.manual_seed(0)
    model = tiny(positions="t5", t5_num_buckets=8, t5_max_distance=8)
    tables = [n for n, _ in model.named_parameters() if "relative_attention_bias" in n]
    assert tables == ["relative_bias.relative_attention_bias.weight"]
    x = torch.randint(0, 20, (2, 16))
    F.cross_entropy(model(x).logits.reshape(-1, 20), torch.roll(x, -1, 1).reshape(-1)).backward()
    assert model.relative_bias.relative_attention_bias.weight.grad.abs().sum() > 0
