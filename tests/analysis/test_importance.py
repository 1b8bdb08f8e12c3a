"""Head importance: the exact method (a layer's heads batched in one pass at hook_z) equals one full forward per head
under qkv.intervene (the oracle below, itself checked against a hand-run ablation), for GPT, BERT (MiniLM) and the
encoder-decoder; attribution patching equals the directional derivative measured by finite differences; Spearman's
rank correlation equals scipy's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.analysis import causal_lm_loss, head_importance, rank_correlation
from qkv.attention.multi_head import attention_modules, named_attention_modules
from qkv.errors import ConfigError


def one_forward_per_head(model, ids, ablation="zero", metric=causal_lm_loss, **inputs) -> torch.Tensor:
    """The plain way the exact method must equal: for each head, one full forward under qkv.intervene, the metric's
    change averaged over the batch, ``(layers, heads)`` fp64."""
    named = named_attention_modules(model)
    out = torch.zeros(len(named), max(m.num_heads for _, m in named), dtype=torch.float64)
    token_mask = inputs.get("attention_mask")
    with torch.no_grad():
        clean = metric(model(ids, **inputs), ids, **inputs).double()
        for layer, (name, module) in enumerate(named):
            for head in range(module.num_heads):
                with qkv.intervene(model, {f"{name}.hook_z": {head: ablation}}, token_mask=token_mask):
                    out[layer, head] = float((metric(model(ids, **inputs), ids, **inputs).double() - clean).mean())
    return out


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
    want = one_forward_per_head(model, ids, ablation)
    assert want.abs().max() > 1e-3  # the heads matter
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_the_oracle_is_the_loss_change_of_a_hand_run_ablation():
    """Head 2 of layer 1 mean-ablated by hand, without qkv's hooks: its slice of W_O's input set to its mean."""
    model = _gpt()
    ids = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(4))
    out_proj, head = model.blocks[1].attn.out_proj, slice(16, 24)  # (head_dim 8)
    seen = {}
    with torch.no_grad():
        handle = out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0].clone()))
        clean = causal_lm_loss(model(ids), ids).mean()
        handle.remove()
        mean = seen["in"][..., head].mean(dim=(0, 1))

        def ablate(_module, args):
            x = args[0].clone()
            x[..., head] = mean
            return (x,)

        handle = out_proj.register_forward_pre_hook(ablate)
        ablated = causal_lm_loss(model(ids), ids).mean()
        handle.remove()
    got = one_forward_per_head(model, ids, "mean")
    assert got[1, 2].item() == pytest.approx(float(ablated - clean), rel=1e-12)


def test_exact_importance_batches_a_layers_heads_and_starts_at_that_layer():
    model = _gpt()
    calls = []
    for index, module in enumerate(attention_modules(model)):
        module.register_forward_pre_hook(lambda _m, args, i=index: calls.append((i, args[0].shape[0])))
    head_importance(model, torch.randint(0, 32, (2, 16)))
    # a clean pass over the batch of 2, then for layer L one pass over 4 copies (one per head) from layer L on:
    # the layers before it cannot see the ablation, their output comes from the clean run (start_at_layer)
    assert calls == [(0, 2), (1, 2), (2, 2), (0, 8), (1, 8), (2, 8), (1, 8), (2, 8), (2, 8)]


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_starting_at_a_layer_from_its_recorded_input_gives_the_full_forward(family):
    """start_at_layer (TransformerLens's argument) with the stream recorded at hook_resid_pre: the same output as
    the whole forward pass, bit for bit; a wrong residual is refused by name."""
    torch.manual_seed(0)
    if family == "gpt":
        model, prefix = _gpt("rotary"), "blocks"
        ids, inputs = torch.randint(0, 32, (2, 16)), {}
    else:
        config = qkv.models.BertConfig(vocab_size=32, embed_dim=16, num_layers=3, num_heads=2, ffn_dim=32)
        model, prefix = qkv.models.BertEncoder(config).double().eval(), "layers"
        ids, inputs = torch.randint(0, 32, (2, 9)), {"attention_mask": torch.tensor([[1] * 9, [1] * 5 + [0] * 4])}
    name = f"{prefix}.2.hook_resid_pre"
    with torch.no_grad():
        with qkv.record(model, names=[name]) as cache:
            full = model(ids, **inputs)
        started = model(ids, **inputs, start_at_layer=2, residual=cache[name])
        key = "logits" if family == "gpt" else "last_hidden_state"
        assert torch.equal(getattr(started, key), getattr(full, key))
        with pytest.raises(qkv.errors.ShapeError, match="needs residual, the stream entering that layer"):
            model(ids, **inputs, start_at_layer=2)
        with pytest.raises(ConfigError, match=r"start_at_layer must be in \[0, 3\)"):
            model(ids, **inputs, start_at_layer=3, residual=cache[name])


def test_exact_importance_in_minilm_with_padding_and_a_sentence_similarity_metric():
    model = qkv.load_pretrained("minilm").double()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat.", "나는 학교에 갔다", "Attention!"])
    with torch.no_grad():
        reference = model(*qkv.load_tokenizer("minilm").batch(["A cat was sitting on a rug."])).last_hidden_state
    anchor = reference.mean(dim=1)

    def similarity(output, _ids, attention_mask):
        hidden = output.last_hidden_state * attention_mask[..., None]
        pooled = hidden.sum(dim=1) / attention_mask.sum(dim=1, keepdim=True)
        return F.cosine_similarity(pooled, anchor, dim=-1)

    got = head_importance(model, ids, "mean", similarity, attention_mask=mask)
    want = one_forward_per_head(model, ids, "mean", similarity, attention_mask=mask)
    assert got.shape == (6, 12) and want.abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_exact_importance_in_the_encoder_decoder_covers_encoder_self_and_cross_attention():
    torch.manual_seed(0)
    config = qkv.models.TransformerConfig(
        src_vocab_size=20, tgt_vocab_size=20, embed_dim=32, num_heads=4, ffn_dim=64, dropout=0.0
    )
    model = qkv.models.Transformer(config).double().eval()
    src, tgt = torch.randint(0, 20, (2, 9)), torch.randint(0, 20, (2, 7))

    def loss(output, _src, tgt_ids):
        return causal_lm_loss(output, tgt_ids)

    got = head_importance(model, src, metric=loss, tgt_ids=tgt)
    want = one_forward_per_head(model, src, metric=loss, tgt_ids=tgt)
    assert got.shape == (6, 4) and (want.abs() > 1e-4).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_attribution_is_the_directional_derivative_toward_the_ablation(ablation):
    """Attribution patching = d/de metric(head output + e·(ablated - actual)) at e = 0: measured by central
    differences through qkv.intervene's patching, in float64."""
    model = _gpt("rotary")
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(2))
    got = head_importance(model, ids, ablation, method="attribution")
    with torch.no_grad(), qkv.record(model, names=lambda n: n.endswith("hook_z")) as cache:
        model(ids)
    eps = 1e-5
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        name = f"blocks.{layer}.attn.hook_z"
        actual = cache[name][:, head]
        target = torch.zeros_like(actual) if ablation == "zero" else actual.mean(dim=(0, 1)).expand_as(actual)
        values = []
        for sign in (1, -1):
            patched = actual + sign * eps * (target - actual)
            with torch.no_grad(), qkv.intervene(model, {name: {head: patched}}):
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
    assert model.training and not any(point.active for point in qkv.hook_points(model).values())
    assert all("forward" not in module.__dict__ for module in model.modules())  # no forward was replaced


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


@pytest.mark.parametrize("method", ["exact", "oracle"])
def test_mean_ablation_importance_averages_real_tokens_when_the_input_is_padded(method):
    """With an attention_mask among the model's inputs, a head's mean excludes padding: the importance equals the
    metric change of patching that head with its mean over real tokens, taken by hand."""
    model = qkv.load_pretrained("minilm").double().eval()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat today.", "Hi", "Attention is all"])

    def norm(output, _ids, attention_mask):
        return (output.last_hidden_state * attention_mask[..., None]).sum(dim=(1, 2))

    if method == "exact":
        got = head_importance(model, ids, "mean", norm, attention_mask=mask)
    else:
        got = one_forward_per_head(model, ids, "mean", norm, attention_mask=mask)
    layer, head = 3, 7
    name = f"layers.{layer}.attn.hook_z"
    with torch.no_grad():
        with qkv.record(model, names=[name]) as cache:
            clean = norm(model(ids, mask), ids, mask)
        out = cache[name][:, head]
        by_hand = out[mask.bool()].mean(dim=0)
        with qkv.intervene(model, {name: {head: by_hand}}):
            ablated = norm(model(ids, mask), ids, mask)
    assert got[layer, head].item() == pytest.approx(float((ablated - clean).mean()), rel=1e-9)
