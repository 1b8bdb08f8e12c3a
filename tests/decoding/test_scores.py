"""Scores of outputs: the log-probabilities the model gives its own output, against step-by-step computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.decoding.scores import score_continuation, score_translation
from qkv.special_tokens import BOS_ID, EOS_ID
from tests.conftest import FP32
from tests.decoding.test_translate import half_trained  # noqa: F401 - a fixture
from tests.models.seq2seq_helpers import tiny_batch


def tiny_gpt(context: int = 64) -> qkv.models.GPT:
    torch.manual_seed(0)
    return qkv.models.GPT(qkv.models.GPTConfig(vocab_size=20, max_seq_len=context, embed_dim=16, num_heads=2)).eval()


def stepwise_logprobs(model, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """log p of each new token from a fresh forward over (the last context tokens of) what precedes it."""
    context, rows = model.config.max_seq_len, []
    with torch.no_grad():
        for t in range(prompt_len, sequences.shape[1]):
            logits = model(sequences[:, max(0, t - context) : t]).logits[:, -1]
            rows.append(F.log_softmax(logits, -1).gather(-1, sequences[:, t : t + 1])[:, 0])
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("context", [64, 8])  # 8: the output outgrows the context and the window slides
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_continuation_scores_are_the_models_log_probabilities(context, strategy):
    model = tiny_gpt(context)
    prompt = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1))
    out = qkv.generate(model, prompt, max_new_tokens=12, strategy=strategy, seed=0, num_beams=3)
    scores = score_continuation(model, out, 5)
    torch.testing.assert_close(scores.token_logprobs, stepwise_logprobs(model, out, 5), **FP32)
    torch.testing.assert_close(scores.mean, scores.total / 12)
    if strategy == "greedy":  # each token was the most likely one: its log-probability is the step's largest
        with torch.no_grad():
            best = [
                F.log_softmax(model(out[:, max(0, t - context) : t]).logits[:, -1], -1).max(-1).values
                for t in range(5, out.shape[1])
            ]
        torch.testing.assert_close(scores.token_logprobs, torch.stack(best, dim=1), **FP32)


def test_scores_stop_at_the_end_token():
    model = tiny_gpt()
    out = torch.tensor([[1, 2, 3, 4, 7, 9, 9], [1, 2, 3, 4, 5, 6, 7]])
    scores = score_continuation(model, out, 4, eos_token_id=7)
    assert scores.lengths.tolist() == [1, 3]
    assert (scores.token_logprobs[0, 1:] == 0).all() and (scores.token_logprobs[1] != 0).all()


def test_translation_scores_equal_step_by_step_decoding(half_trained):  # noqa: F811
    model, tok = half_trained
    src = tiny_batch(tok)[0]
    out = qkv.translate(model, src, max_new_tokens=10)
    scores = score_translation(model, src, out)
    state, ids, steps = model.begin_decoding(src), torch.full((src.shape[0], 1), BOS_ID), []
    with torch.no_grad():
        for t in range(out.shape[1]):
            logits, state = model.decode_next(ids, state)
            steps.append(F.log_softmax(logits.float(), -1).gather(-1, out[:, t : t + 1])[:, 0])
            ids = torch.cat([ids, out[:, t : t + 1]], dim=1)
    expected = torch.stack(steps, dim=1)
    ended = (out == EOS_ID).long()
    expected = expected.masked_fill((ended.cumsum(1) - ended) > 0, 0.0)
    torch.testing.assert_close(scores.token_logprobs, expected, **FP32)
    assert (scores.total <= 0).all()
