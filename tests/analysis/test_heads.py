"""Head scores: previous-token and induction scores against the model's own weights read here independently; in a
2-layer model trained to continue repeated spans, one head's induction score stands out and ablating it costs far
more loss than ablating another head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.analysis import (
    causal_lm_loss,
    head_importance,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from qkv.errors import ConfigError

VOCAB, HALF = 24, 12


def _copy_task(step: int, rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens in which a random span (length 3 to HALF, anywhere) appears twice; the weight marks the
    predictions inside the second copy. The span's length varies, so no fixed offset solves it: a head must find
    the earlier copy by content."""
    g = torch.Generator().manual_seed(step + 1)
    x = torch.randint(0, VOCAB, (rows, 2 * HALF), generator=g)
    weight = torch.zeros(rows, 2 * HALF - 1)
    for r in range(rows):
        length = int(torch.randint(3, HALF + 1, (1,), generator=g))
        start = int(torch.randint(0, 2 * HALF - 2 * length + 1, (1,), generator=g))
        x[r, start + length : start + 2 * length] = x[r, start : start + length]
        weight[r, start + length : start + 2 * length - 1] = 1
    return x, weight


@pytest.fixture(scope="module")
def induction_model() -> qkv.models.GPT:
    """2 layers, 4 heads, rotary positions, trained for 1,000 steps on :func:`_copy_task` (about 15 s)."""
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(
        vocab_size=VOCAB, max_seq_len=2 * HALF, num_layers=2, num_heads=4, embed_dim=64, positions="rotary"
    )
    model = qkv.models.GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1000):
        x, weight = _copy_task(step)
        logits = model(x).logits
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="none")
        loss = (losses * weight.reshape(-1)).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_scores_equal_the_weights_read_off_return_attention(induction_model):
    ids = repeated_random_tokens(VOCAB, HALF, batch=4, seed=99)
    with torch.no_grad():
        weights = induction_model(ids, return_attention=True).attentions  # per layer (batch, heads, seq, seq)
    prev = torch.stack([torch.stack([w[:, :, i, i - 1] for i in range(1, 2 * HALF)]).mean((0, 1)) for w in weights])
    induct = torch.stack([torch.stack([w[:, :, HALF + i, i + 1] for i in range(HALF)]).mean((0, 1)) for w in weights])
    torch.testing.assert_close(previous_token_scores(induction_model, ids), prev.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(induction_scores(induction_model, ids), induct.double(), rtol=1e-5, atol=1e-6)


def test_a_trained_induction_head_stands_out_and_matters(induction_model):
    ids = repeated_random_tokens(VOCAB, HALF, batch=16, seed=123)
    scores = induction_scores(induction_model, ids)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    assert scores[layer, head] > 0.5 and scores[layer, head] > 3 * scores.flatten().sort().values[-2]
    importance = head_importance(induction_model, ids)
    others = torch.cat([importance.flatten()[: layer * 4 + head], importance.flatten()[layer * 4 + head + 1 :]])
    assert importance[layer, head] > 5 * others.median().clamp(min=1e-3)
    # and the loss it measures is the model's own
    with torch.no_grad(), qkv.intervene(induction_model, {f"blocks.{layer}.attn.hook_z": {head: "zero"}}):
        ablated = float(causal_lm_loss(induction_model(ids), ids).mean())
    with torch.no_grad():
        clean = float(causal_lm_loss(induction_model(ids), ids).mean())
    assert importance[layer, head] == pytest.approx(ablated - clean)


def test_induction_scores_refuse_ids_that_are_not_repeated(induction_model):
    with pytest.raises(ConfigError, match="repeated twice"):
        induction_scores(induction_model, torch.randint(0, VOCAB, (2, 10)))


def test_logit_lens_ends_in_the_models_logits_and_reads_each_layers_residual():
    from qkv.analysis import logit_lens, record

    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=3, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (2, 8))
    lens = logit_lens(model.eval(), ids)
    assert lens.shape == (3, 2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(lens[-1], model(ids).logits, rtol=0, atol=0)
        with record(model, names=["blocks.0.hook_resid_post"]) as cache:
            model(ids)
        # layer 0's lens by hand: its block's output through the final LayerNorm and the (tied) embedding matrix
        resid = cache["blocks.0.hook_resid_post"]
        by_hand = F.layer_norm(resid, (16,), model.final_norm.weight, model.final_norm.bias, 1e-5)
        torch.testing.assert_close(lens[0], by_hand @ model.token_embedding.weight.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="needs a causal LM"):
        logit_lens(qkv.load_pretrained("minilm"), ids)


def _attention_output(model, layer, ablate, ids):
    """What attention module ``layer`` adds to the residual stream, with ``ablate`` applied, ``(batch, seq, dim)``."""
    seen = {}
    handle = model.blocks[layer].attn.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out[0]))
    try:
        edits = {}
        for (lay, head), edit in ablate.items():
            edits.setdefault(f"blocks.{lay}.attn.hook_z", {})[head] = edit
        with torch.no_grad(), qkv.intervene(model, edits):
            model(ids)
    finally:
        handle.remove()
    return seen["out"]


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_direct_logit_attribution_equals_each_heads_write_through_the_frozen_final_norm(norm):
    """A head's write into the residual stream, measured as the module's output with only that head kept minus its
    output with every head zeroed (the bias), through the final norm with its scale frozen at the actual final
    residual, dotted with the target token's unembedding row."""
    from qkv.analysis import direct_logit_attribution

    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=20, max_seq_len=8, num_layers=2, num_heads=4, embed_dim=32, norm=norm)
    model = qkv.models.GPT(config).double().eval()
    with torch.no_grad():  # a gain and bias that are not all ones and zeros
        model.final_norm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 20, (2, 8))
    dla = direct_logit_attribution(model, ids)
    assert dla.shape == (2, 4, 2, 7) and dla.dtype == torch.float64
    final = {}
    model.final_norm.register_forward_pre_hook(lambda _m, args: final.__setitem__("x", args[0]))
    with torch.no_grad():
        model(ids)
    x = final["x"][:, :7]
    unembed = model.lm_head.weight[ids[:, 1:]]  # (batch, 7, dim)
    for layer, head in [(0, 1), (1, 3)]:
        others = {(layer, h): "zero" for h in range(4) if h != head}
        write = (_attention_output(model, layer, others, ids) - _attention_output(
            model, layer, {**others, (layer, head): "zero"}, ids))[:, :7]  # fmt: skip
        if norm == "layer":
            write = (write - write.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        else:
            write = write / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        want = (write * model.final_norm.weight * unembed).sum(-1)
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(dla[layer, head], want, rtol=1e-9, atol=1e-12)


def test_direct_logit_attribution_refuses_encoders_and_bad_targets():
    from qkv.analysis import direct_logit_attribution

    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=1, num_heads=2, embed_dim=8))
    ids = torch.randint(0, 16, (2, 8))
    with pytest.raises(ConfigError, match="targets must be"):
        direct_logit_attribution(model, ids, targets=torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        direct_logit_attribution(model, ids[:, :1])
    with pytest.raises(ConfigError, match="needs a causal LM"):
        direct_logit_attribution(qkv.load_pretrained("minilm"), ids)
