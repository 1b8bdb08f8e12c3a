"""Decoding controls against HuggingFace's logits processors (the same definitions) and hand computations."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.decoding.controls import LogitsControls
from qkv.errors import ConfigError

transformers = pytest.importorskip("transformers")


def random_case(seed: int, rows: int = 3, seq: int = 12, vocab: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, seq), generator=g), torch.randn(rows, vocab, generator=g) * 3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_is_huggingfaces(seed, penalty):
    ids, scores = random_case(seed)
    expected = transformers.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
    torch.testing.assert_close(LogitsControls(repetition_penalty=penalty)(scores, ids, 4), expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [1, 2, 3, 12, 13])
def test_no_repeat_ngram_is_huggingfaces(seed, n):
    ids, scores = random_case(seed, vocab=4)  # a small vocabulary: n-grams do repeat
    expected = transformers.NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    assert torch.equal(LogitsControls(no_repeat_ngram_size=n)(scores, ids, 4), expected)


@pytest.mark.parametrize("new", [0, 2, 3, 5])
def test_min_new_tokens_is_huggingfaces(new):
    ids, scores = random_case(0, seq=4 + new)
    expected = transformers.MinNewTokensLengthLogitsProcessor(4, 3, eos_token_id=2)(ids, scores.clone())
    assert torch.equal(LogitsControls(min_new_tokens=3, eos_token_id=2)(scores, ids, 4), expected)


@pytest.mark.parametrize("seed", range(3))
def test_suppress_tokens_is_huggingfaces(seed):
    ids, scores = random_case(seed)
    expected = transformers.SuppressTokensLogitsProcessor([0, 4])(ids, scores.clone())
    assert torch.equal(LogitsControls(suppress_tokens=[0, 4])(scores, ids, 4), expected)


def test_suppressed_tokens_are_never_generated_on_any_strategy(gpt2):
    """Suppress the token greedy decoding would pick: no strategy emits it, and greedy's first pick changes."""
    model = gpt2[1]
    prompt = torch.tensor([[4, 29, 31]])
    favourite = int(qkv.generate(model, prompt, max_new_tokens=1)[0, -1])
    for options in ({}, {"strategy": "sample", "seed": 0}, {"strategy": "beam", "num_beams": 3}):
        out = qkv.generate(model, prompt, max_new_tokens=8, suppress_tokens=[favourite], **options)
        assert favourite not in out[0, 3:].tolist(), options
    streamed = list(qkv.generate_stream(model, prompt, max_new_tokens=8, suppress_tokens=[favourite]))
    assert favourite not in [int(t) for t in streamed]


def test_frequency_and_presence_penalties_by_hand():
    ids = torch.tensor([[5, 1, 1, 2, 1, 0]])  # prompt [5, 1]; generated 1, 2, 1, 0
    scores = torch.zeros(1, 6)
    out = LogitsControls(frequency_penalty=0.5, presence_penalty=0.25)(scores, ids, 2)
    # token 1: twice generated (the prompt's does not count) -> 2 * 0.5 + 0.25; tokens 2 and 0 once; 5 never
    assert out.tolist() == [[-0.75, -1.25, -0.75, 0.0, 0.0, 0.0]]


def test_controls_read_nothing_back_to_the_host():
    from tests.decoding.test_host_reads import reads

    ids, scores = random_case(1)
    controls = LogitsControls(1.3, 0.5, 0.5, 2, 3, eos_token_id=1, suppress_tokens=(0, 5))
    controls(scores, ids, 4)  # warm-up
    assert reads(lambda: controls(scores, ids, 4)) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
        {"min_new_tokens": 20, "eos_token_id": 3},
        {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "min_new_tokens": 10, "eos_token_id": 7},
    ],
)
def test_greedy_generation_with_controls_equals_hf_generate(gpt2, options):
    hf, ours = gpt2
    prompt = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(3))
    hf.generation_config.eos_token_id = options.get("eos_token_id")
    mask = torch.ones_like(prompt)  # (else HF takes prompt tokens equal to pad_token_id for padding)
    theirs = hf.generate(prompt, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0, **options)
    mine = qkv.generate(ours, prompt, max_new_tokens=30, **options)
    if "eos_token_id" in options:  # HF stops at the end token and pads; qkv fills the row with it
        mine = mine[:, : theirs.shape[1]]
    assert torch.equal(mine, theirs)


def _has_repeated_ngram(row: list[int], n: int) -> bool:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(grams) != len(set(grams))


def test_beam_search_blocks_ngrams_and_survives_when_every_continuation_is_blocked(gpt2):
    _, ours = gpt2
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(5))
    out = qkv.generate(ours, prompt, max_new_tokens=25, strategy="beam", num_beams=3, no_repeat_ngram_size=2)
    assert not any(_has_repeated_ngram(row, 2) for row in out.tolist())
    # unigram blocking on a 40-token vocabulary: after at most 40 distinct tokens nothing may follow
    out = qkv.generate(ours, prompt, max_new_tokens=60, strategy="beam", num_beams=2, no_repeat_ngram_size=1)
    assert all(len(set(row)) == len(row) for row in out.tolist()) and out.shape[1] <= 40


@pytest.mark.parametrize(
    "options, words",
    [
        ({"repetition_penalty": -1.0}, "repetition_penalty must be a finite number > 0"),
        ({"frequency_penalty": -0.5}, "frequency_penalty must be a finite number >= 0"),
        ({"no_repeat_ngram_size": 500}, "larger than the model's context"),
        ({"min_new_tokens": 3}, "min_new_tokens needs eos_token_id"),
        ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size must be an int"),
    ],
)
def test_bad_controls_are_named(gpt2, options, words):
    with pytest.raises(ConfigError, match=words):
        qkv.generate(gpt2[1], torch.zeros(1, 3, dtype=torch.long), max_new_tokens=5, **options)
    with pytest.raises(ConfigError, match=words):  # the stream refuses them where it is asked for
        qkv.generate_stream(gpt2[1], torch.zeros(1, 3, dtype=torch.long), max_new_tokens=5, **options)


class PieceTokenizer:
    """Token i decodes to PIECES[i]: multi-character pieces, so a stop string can span token boundaries."""

    PIECES = ["ab", "c", "d", "ef", "g", "h", "ij", "k", "lm", "n"] * 4

    def decode(self, ids: list[int]) -> str:
        return "".join(self.PIECES[i] for i in ids)


def test_stop_strings_end_generation_across_token_boundaries(gpt2):
    from qkv.decoding.controls import stop_strings

    _, ours = gpt2
    tok = PieceTokenizer()
    prompt = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(8))
    full = qkv.generate(ours, prompt, max_new_tokens=40)
    text = tok.decode(full[0, 4:].tolist())
    target = text[15:18]  # three characters from the middle of the continuation, wherever token edges fall
    stopped = qkv.generate(ours, prompt, max_new_tokens=40, stopping_criteria=[stop_strings([target], tok.decode, 4)])
    new = tok.decode(stopped[0, 4:].tolist())
    assert torch.equal(stopped, full[:, : stopped.shape[1]])  # the same tokens, cut
    assert target in new and target not in tok.decode(stopped[0, 4:-1].tolist())  # cut at the completing token
    streamed = list(
        qkv.generate_stream(ours, prompt, max_new_tokens=40, stopping_criteria=[stop_strings([target], tok.decode, 4)])
    )
    assert torch.equal(torch.stack(streamed, 1), stopped[:, 4:])


def test_a_stopping_callback_and_max_time(gpt2):
    _, ours = gpt2
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = qkv.generate(ours, prompt, max_new_tokens=30, stopping_criteria=[lambda ids, scores: ids.shape[1] >= 10])
    assert out.shape == (2, 10)
    out = qkv.generate(
        ours,
        prompt,
        max_new_tokens=30,
        strategy="beam",
        num_beams=2,
        stopping_criteria=[lambda ids, scores: ids.shape[1] >= 8],
    )
    assert out.shape[1] <= 8
    assert qkv.generate(ours, prompt, max_new_tokens=10_000, max_time=1e-9).shape[1] == 4  # one step, then the clock
    with pytest.raises(ConfigError, match="max_time must be a number of seconds > 0"):
        qkv.generate(ours, prompt, max_new_tokens=3, max_time=0)
    from qkv.decoding.controls import stop_strings

    with pytest.raises(ConfigError, match="stop strings must be non-empty"):
        stop_strings([""], str, 3)


def test_beam_search_returns_its_n_best_best_first(gpt2):
    _, ours = gpt2
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    best = qkv.generate(ours, prompt, max_new_tokens=8, strategy="beam", num_beams=4)
    nbest = qkv.generate(ours, prompt, max_new_tokens=8, strategy="beam", num_beams=4, num_return_sequences=3)
    assert nbest.shape == (6, 12) and torch.equal(nbest[::3], best)
    assert torch.equal(nbest[:, :4], prompt.repeat_interleave(3, dim=0))
    totals = qkv.score_continuation(ours, nbest, 4).total.view(2, 3)  # equal lengths: ranked by total log-prob
    assert (totals[:, :-1] >= totals[:, 1:] - 1e-5).all() and len({tuple(r) for r in nbest.tolist()}) == 6


def test_several_samples_per_prompt(gpt2):
    _, ours = gpt2
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    out = qkv.generate(ours, prompt, max_new_tokens=10, strategy="sample", seed=3, num_return_sequences=4)
    assert out.shape == (8, 14) and torch.equal(out[:, :4], prompt.repeat_interleave(4, dim=0))
    assert len({tuple(r) for r in out[:4, 4:].tolist()}) > 1  # different samples of one prompt
    assert torch.equal(
        out, qkv.generate(ours, prompt, max_new_tokens=10, strategy="sample", seed=3, num_return_sequences=4)
    )


@pytest.mark.parametrize(
    "strategy, options, words",
    [
        ("greedy", {"num_return_sequences": 2}, "greedy decoding has one answer per prompt"),
        ("beam", {"num_return_sequences": 5, "num_beams": 4}, "cannot exceed num_beams"),
        ("sample", {"num_return_sequences": 0}, "num_return_sequences must be an int >= 1"),
    ],
)
def test_bad_return_sequences_are_named(gpt2, strategy, options, words):
    with pytest.raises(ConfigError, match=words):
        qkv.generate(gpt2[1], torch.zeros(1, 3, dtype=torch.long), max_new_tokens=5, strategy=strategy, **options)


def _processed_score(model, seq: torch.Tensor, prompt_len: int, controls: LogitsControls) -> float:
    """Sum over the new tokens of the controlled log-probabilities, replayed step by step without a cache."""
    total = 0.0
    with torch.no_grad():
        for t in range(prompt_len, seq.shape[1]):
            logp = torch.log_softmax(model(seq[:, :t]).logits[:, -1].float(), -1)
            total += float(controls(logp, seq[:, :t], prompt_len)[0, seq[0, t]])
    return total


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_with_controls_scores_at_least_as_high_as_hf(gpt2, seed):
    """Beam search is a heuristic: compare what each finds by its score under the same controls, not token by
    token. Without an end token every hypothesis has 10 new tokens, so sums compare."""
    hf, ours = gpt2
    prompt = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(seed))
    options = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}
    hf.generation_config.eos_token_id = None
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=10,
        num_beams=4,
        do_sample=False,
        pad_token_id=0,
        **options,
    )
    mine = qkv.generate(ours, prompt, max_new_tokens=10, strategy="beam", num_beams=4, **options)
    controls = LogitsControls(**options)
    assert mine.shape == theirs.shape
    assert _processed_score(ours, mine, 5, controls) >= _processed_score(ours, theirs, 5, controls) - 1e-4
