"""Decoding: the cache changes nothing, beam width 1 and top-k 1 are greedy, sampling is seeded, EOS ends rows."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.decoding import generate, generate_stream
from qkv.errors import ConfigError, ShapeError
from qkv.models import GPT, GPTConfig
from tests.models.test_gpt import tiny


@pytest.fixture
def model():
    torch.manual_seed(1)
    return tiny(max_seq_len=12).eval()


def prompt():
    return torch.randint(0, 20, (3, 4), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_kv_cache_generation_equals_no_cache(model, strategy):
    # 4 + 16 tokens > the context of 12: the window slides, and both paths must agree there too
    kw = dict(seed=5, num_beams=3, eos_token_id=None)
    a = generate(model, prompt(), max_new_tokens=16, strategy=strategy, **kw)
    b = generate(model, prompt(), max_new_tokens=16, strategy=strategy, use_cache=False, **kw)
    assert torch.equal(a, b)


def test_beam_width_one_and_top_k_one_equal_greedy(model):
    greedy = generate(model, prompt(), max_new_tokens=10)
    assert torch.equal(generate(model, prompt(), max_new_tokens=10, strategy="beam", num_beams=1), greedy)
    assert torch.equal(generate(model, prompt(), max_new_tokens=10, strategy="sample", top_k=1, seed=123), greedy)
    assert torch.equal(generate(model, prompt(), max_new_tokens=10, strategy="sample", top_p=1e-6, seed=9), greedy)


def test_sampling_is_reproducible_and_varies_with_seed(model):
    a = generate(model, prompt(), max_new_tokens=10, strategy="sample", seed=1)
    assert torch.equal(a, generate(model, prompt(), max_new_tokens=10, strategy="sample", seed=1))
    assert not torch.equal(a, generate(model, prompt(), max_new_tokens=10, strategy="sample", seed=2))


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(model):
    def logprob(ids):
        logits = model(ids[:, :-1]).logits.log_softmax(-1)
        return logits.gather(-1, ids[:, 1:, None])[:, 3:].sum().item()  # new tokens only

    x = prompt()[:1]
    greedy = generate(model, x, max_new_tokens=6)
    beam = generate(model, x, max_new_tokens=6, strategy="beam", num_beams=5, length_penalty=0.0)
    assert logprob(beam) >= logprob(greedy) - 1e-5


def test_eos_finishes_rows(model):
    greedy = generate(model, prompt(), max_new_tokens=8)
    eos = int(greedy[0, 5])  # the token greedy picks second for row 0
    out = generate(model, prompt(), max_new_tokens=8, eos_token_id=eos)
    row = out[0, 4:].tolist()
    first = row.index(eos)
    assert all(t == eos for t in row[first:])


def test_bad_arguments(model):
    with pytest.raises(ShapeError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=5)
    with pytest.raises(ConfigError, match="unknown strategy"):
        generate(model, prompt(), max_new_tokens=5, strategy="nucleus")
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, prompt(), max_new_tokens=5, strategy="sample", temperature=0)


def test_public_name():
    assert qkv.generate is generate


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_generate_stream_yields_the_tokens_of_generate(model, strategy):
    full = generate(model, prompt(), max_new_tokens=10, strategy=strategy, seed=3, temperature=0.7)
    streamed = list(qkv.generate_stream(model, prompt(), max_new_tokens=10, strategy=strategy, seed=3, temperature=0.7))
    assert len(streamed) == 10 and all(t.shape == (3,) for t in streamed)
    assert torch.equal(torch.stack(streamed, dim=1), full[:, 4:])
    assert torch.is_grad_enabled(), "the stream must not leave autograd disabled in the caller"


def test_generate_stream_checks_its_arguments_when_asked_not_at_the_first_token(model):
    with pytest.raises(ConfigError, match="finite number > 0"):
        qkv.generate_stream(model, prompt(), max_new_tokens=3, strategy="sample", temperature=float("nan"))
    with pytest.raises(ConfigError, match="beam search cannot stream"):
        qkv.generate_stream(model, prompt(), max_new_tokens=3, strategy="beam")


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_zero_new_tokens_returns_the_prompts_on_every_strategy(strategy):
    """0 new tokens: each strategy returns its prompts unchanged, as many rows as it would return."""
    model = GPT(GPTConfig(vocab_size=11, max_seq_len=16, num_layers=1, num_heads=2, embed_dim=8)).eval()
    prompt = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    n = 1 if strategy == "greedy" else 2
    out = generate(model, prompt, max_new_tokens=0, strategy=strategy, num_beams=2, num_return_sequences=n, seed=0)
    assert torch.equal(out, prompt.repeat_interleave(n, dim=0))
    prompts = [prompt[0, 2:], prompt[1]]  # different lengths: a list in, the prompts out
    assert [
        p.tolist()
        for p in generate(model, prompts, max_new_tokens=0, strategy=strategy, num_beams=2, num_return_sequences=n)
    ] == [p.tolist() for p in prompts for _ in range(n)]
    if strategy != "beam":
        assert list(generate_stream(model, prompt, max_new_tokens=0, strategy=strategy)) == []


def test_calls_inside_one_frozen_weights_context_derive_the_decoding_layouts_once(model):
    """Each generate call derives its decoding layouts (the stacked Q/K/V weight here) afresh: the weights may have
    changed between calls. A caller who promises they do not wraps the calls in one ``frozen_weights()`` context,
    and the second call reuses the first's, with the same tokens."""
    from qkv.attention import frozen_weights
    from qkv.attention.frozen import kept

    attn = model.blocks[0].attn
    a = generate(model, prompt(), max_new_tokens=4)
    first = kept(attn, "qkv")
    b = generate(model, prompt(), max_new_tokens=4)
    assert first is not None and kept(attn, "qkv") is not first
    with frozen_weights():
        c = generate(model, prompt(), max_new_tokens=4)
        inside = kept(attn, "qkv")
        d = generate(model, prompt(), max_new_tokens=4)
        assert kept(attn, "qkv") is inside
    assert torch.equal(a, c) and torch.equal(b, d)
