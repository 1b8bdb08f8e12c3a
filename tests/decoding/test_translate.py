"""qkv.translate: beam width 1 is greedy, beams are at least as likely, EOS ends rows, the alignment is the one used
while decoding, for the RNN and the Transformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.decoding import translate
from qkv.decoding.translate import alignment
from qkv.errors import ConfigError
from qkv.tokenizers.pair import BOS_ID, EOS_ID
from tests.conftest import FP32, FP32_TIGHT
from tests.models import test_rnn_seq2seq, test_transformer
from tests.models.seq2seq_helpers import TINY_PAIRS, overfit, tiny_batch, tiny_tokenizer

MAKERS = {
    "rnn": lambda tok: test_rnn_seq2seq.make(tok, score="general"),
    "bahdanau": lambda tok: test_rnn_seq2seq.make(tok, attention="bahdanau"),
    "transformer": lambda tok: test_transformer.make(tok),
}


@pytest.fixture(scope="module", params=list(MAKERS))
def half_trained(request):
    """A model trained a little: confident enough to end rows with </s>, unsure enough for beams to matter."""
    tok = tiny_tokenizer()
    model = MAKERS[request.param](tok)
    overfit(model, tiny_batch(tok), steps=25, lr=1e-2)
    return model.eval(), tok


def logprob(model, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Sum of log p over each row's tokens up to and with its first </s>."""
    tgt_in = torch.cat([torch.full((out.shape[0], 1), BOS_ID), out[:, :-1]], dim=1)
    logp = F.log_softmax(model(src, tgt_in).logits.float(), dim=-1).gather(-1, out[..., None])[..., 0]
    ended = (out == EOS_ID).cumsum(dim=1)
    keep = (ended == 0) | ((ended == 1) & (out == EOS_ID))
    return (logp * keep).sum(dim=1)


def test_beam_width_one_is_greedy(half_trained):
    model, tok = half_trained
    src = tiny_batch(tok)[0]
    greedy = translate(model, src, max_new_tokens=12)
    beam = translate(model, src, max_new_tokens=12, strategy="beam", num_beams=1, length_penalty=0.0)
    assert torch.equal(beam[:, : greedy.shape[1]], greedy)


def test_beam_search_is_at_least_as_likely_as_greedy(half_trained):
    model, tok = half_trained
    src = tiny_batch(tok)[0]
    greedy = translate(model, src, max_new_tokens=12)
    beam = translate(model, src, max_new_tokens=12, strategy="beam", num_beams=4, length_penalty=0.0)
    assert torch.all(logprob(model, src, beam) >= logprob(model, src, greedy) - 1e-5)


def test_rows_end_at_eos_and_respect_the_limit(half_trained):
    model, tok = half_trained
    src = tiny_batch(tok)[0]
    out = translate(model, src, max_new_tokens=5)
    assert out.shape == (len(TINY_PAIRS), 5) or out.shape[1] < 5
    for row in translate(model, src, max_new_tokens=30).tolist():
        if EOS_ID in row:
            assert all(t == EOS_ID for t in row[row.index(EOS_ID) :])
    with pytest.raises(ConfigError, match="num_beams must be an int >= 1"):
        translate(model, src, max_new_tokens=5, strategy="beam", num_beams=0)


def test_the_alignment_is_what_the_decoder_used(half_trained):
    """alignment() re-runs the decoder with teacher forcing; the weights equal those of step-by-step decoding."""
    model, tok = half_trained
    src = tiny_batch(tok)[0][:2]
    out = translate(model, src, max_new_tokens=8)
    weights = alignment(model, src, out)
    assert weights.shape == (2, out.shape[1], src.shape[1])
    if hasattr(model, "decode_step"):  # the RNN hands back each step's weights
        state, ids, steps = model.begin_decoding(src), torch.full((2,), BOS_ID), []
        for t in range(out.shape[1]):
            _, state, w = model.decode_step(ids, state)
            steps.append(w)
            ids = out[:, t]
        torch.testing.assert_close(weights, torch.stack(steps, dim=1), **FP32_TIGHT)
    else:  # the Transformer, decoded step by step on its KV cache: the last layer's cross-attention, head mean
        state, ids, steps = model.begin_decoding(src), torch.full((2, 1), BOS_ID), []
        for t in range(out.shape[1]):
            _, _, cross = model.decode(
                ids[:, -1:], state.memory, state.keep, state.cache, return_weights=True, cross_kv=state.cross_kv
            )
            steps.append(cross[-1].mean(1)[:, -1])
            ids = torch.cat([ids, out[:, t : t + 1]], dim=1)
        torch.testing.assert_close(weights, torch.stack(steps, dim=1), **FP32_TIGHT)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), **FP32)


def test_the_baseline_has_no_alignment():
    tok = tiny_tokenizer()
    model = test_rnn_seq2seq.make(tok, attention="none")
    src = tiny_batch(tok)[0]
    with pytest.raises(ConfigError, match="no attention"):
        alignment(model, src, translate(model, src, max_new_tokens=3))


def test_translation_controls_and_n_best(half_trained):
    model, tok = half_trained
    src = tiny_batch(tok)[0]
    out = translate(model, src, max_new_tokens=12, no_repeat_ngram_size=2)
    for row in out.tolist():
        row = row[: row.index(EOS_ID)] if EOS_ID in row else row
        grams = [tuple(row[i : i + 2]) for i in range(len(row) - 1)]
        assert len(grams) == len(set(grams))
    longer = translate(model, src, max_new_tokens=12, min_new_tokens=6)
    for row in longer.tolist():
        assert EOS_ID not in row[:6]
    best = translate(model, src, max_new_tokens=12, strategy="beam", num_beams=3)
    nbest = translate(model, src, max_new_tokens=12, strategy="beam", num_beams=3, num_return_sequences=2)
    assert nbest.shape[0] == 2 * src.shape[0] and torch.equal(nbest[::2, : best.shape[1]], best)
