"""RNN encoder-decoder: every attention variant learns, local-p/local-m/Bahdanau match hand computations (forward and
backward), padding changes nothing, shapes and masks of the alignment."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.decoding import translate
from qkv.errors import ConfigError, ShapeError
from qkv.models import RNNSeq2Seq, RNNSeq2SeqConfig
from qkv.models.rnn_seq2seq import RNNDecoderState
from tests.conftest import FP32_TIGHT
from tests.models.seq2seq_helpers import (
    TINY_PAIRS,
    assert_padding_never_changes_results,
    overfit,
    tiny_batch,
    tiny_tokenizer,
)

VARIANTS = {
    "none": {"attention": "none"},
    "luong-dot": {"score": "dot"},
    "luong-general": {"score": "general"},
    "luong-concat": {"score": "concat"},
    "luong-location": {"score": "location"},
    "local-m": {"alignment": "local-m", "window": 3},
    "local-p": {"alignment": "local-p", "window": 3},
    "bahdanau": {"attention": "bahdanau"},
    "lstm": {"cell": "lstm"},
}
DEEP = {
    "lstm-2-layers": {"cell": "lstm", "num_layers": 2},
    "bahdanau-gru-2-layers": {"attention": "bahdanau", "num_layers": 2},
}


def make(tok=None, **kw) -> RNNSeq2Seq:
    torch.manual_seed(0)
    tok = tok or tiny_tokenizer()
    base = dict(src_vocab_size=tok.source.size, tgt_vocab_size=tok.target.size, embed_dim=16, hidden_dim=32)
    return RNNSeq2Seq(RNNSeq2SeqConfig(**{**base, "dropout": 0.0, **kw}))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_overfits_a_tiny_set(variant):
    tok = tiny_tokenizer()
    model = make(tok, **VARIANTS[variant])
    batch = tiny_batch(tok)
    assert overfit(model, batch, steps=120, lr=2e-2) < 0.05
    out = translate(model, batch[0])
    assert [tok.decode_target(row) for row in out.tolist()] == [t for _, t in TINY_PAIRS]


@pytest.mark.parametrize("variant", list(VARIANTS) + list(DEEP))
def test_padding_never_changes_results(variant):
    tok = tiny_tokenizer()
    assert_padding_never_changes_results(make(tok, **{**VARIANTS, **DEEP}[variant]).eval(), tok)


def test_alignment_shapes_and_global_weights_sum_to_one():
    tok = tiny_tokenizer()
    src, tgt_in, _ = tiny_batch(tok)
    out = make(tok).eval()(src, tgt_in, return_attention=True)
    assert out.logits.shape == (len(TINY_PAIRS), tgt_in.shape[1], tok.target.size)
    (w,) = out.cross_attentions
    assert w.shape == (len(TINY_PAIRS), 1, tgt_in.shape[1], src.shape[1])
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert make(tok, attention="none")(src, tgt_in, return_attention=True).cross_attentions is None


def _state(model: RNNSeq2Seq, length: int, step: int = 0) -> RNNDecoderState:
    torch.manual_seed(1)
    h = model.config.hidden_dim
    memory = torch.randn(1, length, h, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(1, length, dtype=torch.bool)
    return RNNDecoderState(memory, keep, torch.zeros(1, 1, h, dtype=torch.float64), torch.zeros(1, h), step)


def test_local_p_window_and_gaussian_match_a_hand_computation():
    """p_t = S·sigmoid(v_pᵀ tanh(W_p h_t)); weights = softmax over |s - p_t| <= D of h_tᵀ W h̄_s, times
    exp(-(s - p_t)² / 2σ²) with σ = D/2; context = Σ weights · h̄_s. Forward and gradients, by hand in float64."""
    model = make(alignment="local-p", window=2, score="general").double()
    S = 9
    state = _state(model, S)
    query = torch.randn(1, model.config.hidden_dim, dtype=torch.float64, requires_grad=True)
    context, weights = model._attend(query, state)

    W_p, v_p = model.position[0].weight, model.position[2].weight
    p = S * torch.sigmoid(v_p @ torch.tanh(W_p @ query[0]))[0]
    D, sigma = 2, 1.0
    window = [s for s in range(S) if abs(s - p.item()) <= D]
    assert 0 < len(window) <= 2 * D + 1
    W = model.score.weight
    scores = torch.stack([query[0] @ W @ state.memory[0, s] for s in window])
    align = torch.softmax(scores, dim=0)
    expected = torch.zeros(S, dtype=torch.float64)
    for a, s in zip(align, window):
        expected[s] = a * math.exp(-((s - p.item()) ** 2) / (2 * sigma**2))
    # the Gaussian factor is differentiable in p as well: rebuild it with p kept in the graph
    gauss = torch.exp(-((torch.arange(S, dtype=torch.float64) - p) ** 2) / (2 * sigma**2))
    hand = torch.zeros(S, dtype=torch.float64).index_put((torch.tensor(window),), align) * gauss
    torch.testing.assert_close(hand.detach(), expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(weights[0], hand, atol=1e-12, rtol=1e-10)
    hand_context = hand @ state.memory[0]
    torch.testing.assert_close(context[0], hand_context, atol=1e-12, rtol=1e-10)

    probe = torch.randn_like(hand_context)
    params = [query, state.memory, W_p, v_p, W]
    ours = torch.autograd.grad((context[0] * probe).sum(), params)
    ref = torch.autograd.grad((hand_context * probe).sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert ours[2].abs().sum() > 0  # the position predictor learns through the Gaussian


def test_local_m_attends_only_to_its_monotonic_window():
    model = make(alignment="local-m", window=2, score="dot").double()
    S, t = 10, 6
    state = _state(model, S, step=t)
    query = torch.randn(1, model.config.hidden_dim, dtype=torch.float64)
    context, weights = model._attend(query, state)
    window = list(range(t - 2, t + 3))
    hand = torch.zeros(S, dtype=torch.float64)
    hand[window] = torch.softmax(state.memory[0, window] @ query[0], dim=0)
    torch.testing.assert_close(weights[0], hand.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(context[0], (hand @ state.memory[0]).detach(), atol=1e-12, rtol=1e-10)


def test_bahdanau_queries_with_the_previous_decoder_state():
    """Step 1's weights come from the encoder's final state (the decoder's initial state), before any input."""
    tok = tiny_tokenizer()
    model = make(tok, attention="bahdanau").eval()
    src, tgt_in, _ = tiny_batch(tok)
    state = model.begin_decoding(src)
    _, _, weights = model.decode_step(tgt_in[:, 0], state)
    score = model.score
    h0 = state.hidden[-1]  # (batch, hidden)
    e = score.v(torch.tanh(score.query_proj(h0)[:, None] + score.key_proj(state.memory))).squeeze(-1)
    hand = torch.softmax(e.masked_fill(~state.keep, float("-inf")), dim=-1)
    torch.testing.assert_close(weights, hand, **FP32_TIGHT)


def test_config_and_input_errors_name_the_problem():
    with pytest.raises(ConfigError, match="model.alignment must be one of"):
        make(alignment="local")
    with pytest.raises(ConfigError, match="must be even"):
        make(hidden_dim=33)
    model = make()
    with pytest.raises(ShapeError, match="at least one real"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="src_ids must hold ids in"):
        model(torch.full((1, 3), 10_000), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="max_len=4"):
        make(score="location", max_source_len=4)(torch.ones(1, 6, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
