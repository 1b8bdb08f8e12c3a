"""Head importance: the exact method (clean run reused below the ablated layer, heads batched) equals one full forward
per head under qkv.intervene (method="forwards", itself checked against a hand-run ablation below), for GPT, BERT
(MiniLM) and the encoder-decoder; attribution patching equals the
directional derivative measured by finite differences; Spearman's rank correlation equals scipy's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.analysis import causal_lm_loss, head_importance, rank_correlation
from qkv.errors import ConfigError
from qkv.visualization.capture import attention_modules


def _gpt(positions: str = "learned") -> qkv.models.GPT:
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(
        vocab_size=32, max_seq_len=16, num_layers=3, num_heads=4, embed_dim=32, positions=positions
    )
    return qkv.models.GPT(config).double().eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("heads_per_pass", [None, 3, 1])
def test_exact_importance_equals_one_forward_per_head_in_gpt(positions, ablation, heads_per_pass):
    model = _gpt(positions)
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(1))
    got = head_importance(model, ids, ablation, heads_per_pass=heads_per_pass)
    want = head_importance(model, ids, ablation, method="forwards")
    assert want.abs().max() > 1e-3  # the heads matter
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_the_plain_method_is_the_loss_change_of_one_intervened_forward():
    model = _gpt()
    ids = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        clean = causal_lm_loss(model(ids), ids).mean()
        with qkv.intervene(model, ablate={(1, 2): "mean"}):
            ablated = causal_lm_loss(model(ids), ids).mean()
    got = head_importance(model, ids, "mean", method="forwards")
    assert got[1, 2].item() == pytest.approx(float(ablated - clean), rel=1e-12)


def test_exact_importance_reuses_the_clean_run_below_the_ablated_layer():
    model = _gpt()
    calls = []
    for index, module in enumerate(attention_modules(model)):
        module.register_forward_pre_hook(lambda *_args, i=index: calls.append(i))
    head_importance(model, torch.randint(0, 32, (2, 16)))
    # a clean pass (layers 0, 1, 2), then for layer L one pass over layers L.. only, its 4 heads batched
    assert calls == [0, 1, 2, 0, 1, 2, 1, 2, 2]


def test_exact_importance_in_minilm_with_padding_and_a_sentence_similarity_metric():
    model = qkv.load_pretrained("minilm").double()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat.", "나는 학교에 갔다", "Attention!"])
    with torch.no_grad():
        reference = model(*qkv.load_tokenizer("minilm").batch(["A cat was sitting on a rug."])).last_hidden_state
    anchor = reference.mean(dim=1)

    def similarity(output, _ids, attention_mask):  # noqa: ANN001, ANN202
        hidden = output.last_hidden_state * attention_mask[..., None]
        pooled = hidden.sum(dim=1) / attention_mask.sum(dim=1, keepdim=True)
        return F.cosine_similarity(pooled, anchor, dim=-1)

    got = head_importance(model, ids, "mean", similarity, attention_mask=mask)
    want = head_importance(model, ids, "mean", similarity, method="forwards", attention_mask=mask)
    assert got.shape == (6, 12) and want.abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_exact_importance_in_the_encoder_decoder_covers_encoder_self_and_cross_attention():
    torch.manual_seed(0)
    config = qkv.models.TransformerConfig(
        src_vocab_size=20, tgt_vocab_size=20, embed_dim=32, num_heads=4, ffn_dim=64, dropout=0.0
    )
    model = qkv.models.Transformer(config).double().eval()
    src, tgt = torch.randint(0, 20, (2, 9)), torch.randint(0, 20, (2, 7))

    def loss(output, _src, tgt_ids):  # noqa: ANN001, ANN202
        return causal_lm_loss(output, tgt_ids)

    got = head_importance(model, src, metric=loss, tgt_ids=tgt)
    want = head_importance(model, src, metric=loss, method="forwards", tgt_ids=tgt)
    assert got.shape == (6, 4) and (want.abs() > 1e-4).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_attribution_is_the_directional_derivative_toward_the_ablation(ablation):
    """Attribution patching = d/de metric(head output + e·(ablated - actual)) at e = 0: measured by central
    differences through qkv.intervene's patching, in float64."""
    model = _gpt("rotary")
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(2))
    got = head_importance(model, ids, ablation, method="attribution")
    with torch.no_grad(), qkv.analysis.record(model) as cache:
        model(ids)
    eps = 1e-5
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        actual = cache.heads[layer][:, head]
        target = torch.zeros_like(actual) if ablation == "zero" else actual.mean(dim=(0, 1)).expand_as(actual)
        values = []
        for sign in (1, -1):
            patched = actual + sign * eps * (target - actual)
            with torch.no_grad(), qkv.intervene(model, patch={("head", layer, head): patched}):
                values.append(causal_lm_loss(model(ids), ids).mean())
        derivative = float(values[0] - values[1]) / (2 * eps)
        assert abs(derivative) > 1e-4
        assert got[layer, head].item() == pytest.approx(derivative, rel=1e-5)


def test_attribution_ranks_the_heads_of_a_random_gpt_like_the_exact_method():
    model = _gpt()
    ids = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(3))
    exact = head_importance(model, ids)
    approx = head_importance(model, ids, method="attribution")
    assert rank_correlation(exact, approx) > 0.5


def test_rank_correlation_equals_scipys_spearman():
    stats = pytest.importorskip("scipy.stats")
    a, b = torch.randn(6, 12), torch.randn(6, 12)
    b = a + 0.7 * b
    assert rank_correlation(a, b) == pytest.approx(stats.spearmanr(a.flatten(), b.flatten()).statistic, rel=1e-12)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)


def test_the_models_training_mode_is_restored():
    model = _gpt().train()
    head_importance(model, torch.randint(0, 32, (1, 16)))
    assert model.training and all(m.head_hook is None for m in attention_modules(model))
    assert all("forward" not in block.__dict__ for block in model.blocks)


def test_bad_arguments_are_named():
    model = _gpt()
    ids = torch.randint(0, 32, (2, 16))
    for kwargs, message in (
        ({"ablation": "half"}, "unknown ablation 'half'"),
        ({"method": "guess"}, "unknown method 'guess'"),
        ({"heads_per_pass": 0}, "heads_per_pass must be at least 1"),
        ({"metric": lambda output, _ids: output.logits.mean()}, r"one value per example, shape \(2,\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            head_importance(model, ids, **kwargs)


@pytest.mark.parametrize("method", ["exact", "forwards"])
def test_mean_ablation_importance_averages_real_tokens_when_the_input_is_padded(method):
    """With an attention_mask among the model's inputs, a head's mean excludes padding: the importance equals the
    metric change of patching that head with its mean over real tokens, taken by hand."""
    model = qkv.load_pretrained("minilm").double().eval()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat today.", "Hi", "Attention is all"])

    def norm(output, _ids, attention_mask):  # noqa: ANN001, ANN202
        return (output.last_hidden_state * attention_mask[..., None]).sum(dim=(1, 2))

    got = head_importance(model, ids, "mean", norm, method=method, attention_mask=mask)
    layer, head = 3, 7
    with torch.no_grad():
        with qkv.analysis.record(model) as cache:
            clean = norm(model(ids, mask), ids, mask)
        out = cache.heads[layer][:, head]
        by_hand = out[mask.bool()].mean(dim=0).expand_as(out).clone()
        with qkv.intervene(model, patch={("head", layer, head): by_hand}):
            ablated = norm(model(ids, mask), ids, mask)
    assert got[layer, head].item() == pytest.approx(float((ablated - clean).mean()), rel=1e-9)
