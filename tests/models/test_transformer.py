"""The encoder-decoder Transformer: equal to PyTorch's nn.Transformer with the same weights (post- and pre-norm,
forward and backward), cached decoding equals the full pass, padding changes nothing, it learns a tiny set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qkv.decoding import translate
from qkv.errors import ConfigError, ShapeError
from qkv.models import Transformer, TransformerConfig
from tests.conftest import FP32, FP64
from tests.models.seq2seq_helpers import (
    TINY_PAIRS,
    assert_padding_never_changes_results,
    overfit,
    tiny_batch,
    tiny_tokenizer,
)


def make(tok=None, **kw) -> Transformer:
    torch.manual_seed(0)
    tok = tok or tiny_tokenizer()
    base = dict(src_vocab_size=tok.source.size, tgt_vocab_size=tok.target.size, embed_dim=32, num_heads=4)
    return Transformer(TransformerConfig(**{**base, "ffn_dim": 64, "dropout": 0.0, **kw}))


def _copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_norm(ours: nn.LayerNorm, theirs: nn.LayerNorm) -> None:
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def _copy_ffn(ours, theirs) -> None:
    theirs.linear1.weight.copy_(ours.up.weight)
    theirs.linear1.bias.copy_(ours.up.bias)
    theirs.linear2.weight.copy_(ours.down.weight)
    theirs.linear2.bias.copy_(ours.down.bias)


def torch_reference(model: Transformer) -> nn.Transformer:
    """``nn.Transformer`` holding ``model``'s weights (embeddings and output layer stay outside, as in PyTorch)."""
    c = model.config
    ref = nn.Transformer(
        c.embed_dim, c.num_heads, c.encoder_layers, c.decoder_layers, c.ffn_dim, dropout=0.0,
        batch_first=True, norm_first=c.norm_placement == "pre", layer_norm_eps=c.norm_eps,
    )  # fmt: skip
    with torch.no_grad():
        for ours, theirs in zip(model.encoder, ref.encoder.layers):
            _copy_attention(ours.attn, theirs.self_attn)
            _copy_ffn(ours.ffn, theirs)
            _copy_norm(ours.attn_residual.norm, theirs.norm1)
            _copy_norm(ours.ffn_residual.norm, theirs.norm2)
        for ours, theirs in zip(model.decoder, ref.decoder.layers):
            _copy_attention(ours.self_attn, theirs.self_attn)
            _copy_attention(ours.cross_attn, theirs.multihead_attn)
            _copy_ffn(ours.ffn, theirs)
            _copy_norm(ours.self_residual.norm, theirs.norm1)
            _copy_norm(ours.cross_residual.norm, theirs.norm2)
            _copy_norm(ours.ffn_residual.norm, theirs.norm3)
        if c.norm_placement == "pre":
            _copy_norm(model.encoder_norm, ref.encoder.norm)
            _copy_norm(model.decoder_norm, ref.decoder.norm)
        else:  # nn.Transformer always adds final norms; the paper's post-norm stack has none
            ref.encoder.norm = None
            ref.decoder.norm = None
    return ref


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # nn.Transformer's note on norm_first
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_equals_pytorch_nn_transformer_forward_and_backward(norm):
    tok = tiny_tokenizer()
    model = make(tok, norm_placement=norm, encoder_layers=2, decoder_layers=2).double()
    ref = torch_reference(model).double()
    src, tgt_in, _ = tiny_batch(tok)

    def reference_logits() -> torch.Tensor:
        scale = math.sqrt(model.config.embed_dim)
        x = model.src_embed(src) * scale + model.positions.span(0, src.shape[1])
        y = model.tgt_embed(tgt_in) * scale + model.positions.span(0, tgt_in.shape[1])
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], dtype=torch.float64)
        pad = src == 0
        h = ref(x, y, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_is_causal=True)
        return model.output(h)

    ours, theirs = model(src, tgt_in).logits, reference_logits()
    real = (tgt_in != 0)[..., None].expand_as(ours)  # rows past a target's end read padding: compare real ones
    torch.testing.assert_close(ours[real], theirs[real], **FP64)

    probe = torch.randn_like(ours) * real
    grads = torch.autograd.grad((ours * probe).sum(), [model.src_embed.weight, model.tgt_embed.weight])
    ref_grads = torch.autograd.grad((theirs * probe).sum(), [model.src_embed.weight, model.tgt_embed.weight])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **FP64)
    q_grad = torch.autograd.grad((model(src, tgt_in).logits * probe).sum(), model.decoder[0].cross_attn.q_proj.weight)[
        0
    ]
    ref_q = torch.autograd.grad((reference_logits() * probe).sum(), ref.decoder.layers[0].multihead_attn.in_proj_weight)
    torch.testing.assert_close(q_grad, ref_q[0][: model.config.embed_dim], **FP64)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_step_by_step_decoding_equals_the_full_pass(norm):
    tok = tiny_tokenizer()
    model = make(tok, norm_placement=norm).eval()
    src, tgt_in, _ = tiny_batch(tok)
    full = model(src, tgt_in).logits
    projections = []  # the source is projected into cross-attention keys and values once, not at every step
    hooks = [layer.cross_attn.k_proj.register_forward_hook(lambda *_: projections.append(1)) for layer in model.decoder]
    state = model.begin_decoding(src)
    steps = []
    for t in range(1, tgt_in.shape[1] + 1):
        logits, state = model.decode_next(tgt_in[:, :t], state)
        steps.append(logits)
        if t == 2:
            state = state.select(torch.arange(src.shape[0]))  # (a beam search keeps rows: the same here)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(torch.stack(steps, dim=1), full, **FP32)
    assert len(projections) == len(model.decoder)


def test_padding_never_changes_results():
    tok = tiny_tokenizer()
    assert_padding_never_changes_results(make(tok).eval(), tok)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_overfits_a_tiny_set(norm):
    tok = tiny_tokenizer()
    model = make(tok, norm_placement=norm, share_embeddings=True)
    batch = tiny_batch(tok)
    assert overfit(model, batch, steps=150, lr=3e-3) < 0.05
    out = translate(model, batch[0])
    assert [tok.decode_target(row) for row in out.tolist()] == [t for _, t in TINY_PAIRS]


def test_attention_outputs_and_errors():
    tok = tiny_tokenizer()
    src, tgt_in, _ = tiny_batch(tok)
    model = make(tok, encoder_layers=1, decoder_layers=3)
    out = model(src, tgt_in, return_attention=True)
    assert [w.shape for w in out.cross_attentions] == [(len(TINY_PAIRS), 4, tgt_in.shape[1], src.shape[1])] * 3
    assert [w.shape for w in out.attentions] == [(len(TINY_PAIRS), 4, tgt_in.shape[1], tgt_in.shape[1])] * 3
    assert len(out.encoder_attentions) == 1
    with pytest.raises(ConfigError, match="shared vocabulary|one vocabulary"):
        make(tok, share_embeddings=True, tgt_vocab_size=tok.source.size + 1)
    with pytest.raises(ShapeError, match="exceed model.max_seq_len=8"):
        make(tok, max_seq_len=8)(torch.ones(1, 9, dtype=torch.long), tgt_in[:1])
    with pytest.raises(ShapeError, match="tgt_ids must be an integer tensor"):
        model(src, tgt_in.float())


def test_the_same_seed_gives_the_same_weights():
    """Initialisation must not depend on where objects live in memory (it once iterated over a set of modules)."""
    models = [make() for _ in range(6)]  # kept alive: each lives at new addresses
    for other in models[1:]:
        for (name, a), b in zip(models[0].state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), name
