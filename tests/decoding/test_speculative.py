"""Speculative decoding: greedy output identical to the target's, sampling distributed as the target's."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ConfigError


def speculative(target, draft, prompt, new_tokens, **overrides) -> qkv.GenerateOutput:
    return qkv.generate(target, prompt, max_new_tokens=new_tokens, draft_model=draft, return_dict=True, **overrides)


def gpt(layers: int, seed: int, vocab: int = 24, context: int = 48, dim: int = 32, **kw) -> qkv.models.GPT:
    torch.manual_seed(seed)
    config = qkv.models.GPTConfig(
        vocab_size=vocab, max_seq_len=context, num_layers=layers, num_heads=2, embed_dim=dim, **kw
    )
    return qkv.models.GPT(config).eval()


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_speculative_output_is_the_targets_greedy_output(k):
    target, draft = gpt(4, 0), gpt(1, 1)
    for seed in range(8):
        prompt = torch.randint(0, 24, (1, 3 + seed % 7), generator=torch.Generator().manual_seed(seed))
        result = speculative(target, draft, prompt, 30, num_draft_tokens=k)
        assert torch.equal(result.sequences, qkv.generate(target, prompt, max_new_tokens=30))
        assert 0 <= result.accepted <= result.drafted


def test_a_draft_equal_to_the_target_is_always_accepted_and_the_context_is_respected():
    target = gpt(2, 0, context=20)
    prompt = torch.randint(0, 24, (1, 4), generator=torch.Generator().manual_seed(0))
    result = speculative(target, target, prompt, 30, num_draft_tokens=4)  # past the 20-token context
    assert result.acceptance_rate == 1.0 and torch.equal(
        result.sequences, qkv.generate(target, prompt, max_new_tokens=30)
    )


SHARPEN = 10.0


def test_speculative_sampling_keeps_the_targets_distribution():
    """The first new token over 1,000 runs against the target's exact probabilities: chi-squared with 4 degrees of
    freedom below 18.47 (p = 0.001). A wrong accept rule (e.g. always keeping the draft) fails it by far: with
    these p and q that would put 459 of 1,000 draws on token 1 where 167 are expected."""
    vocab = 5
    target = gpt(2, 0, vocab=vocab, dim=16, tie_embeddings=False)
    draft = gpt(1, 7, vocab=vocab, dim=16, tie_embeddings=False)
    with torch.no_grad():  # sharpen the output layers so that p and q differ a lot
        target.lm_head.weight.mul_(SHARPEN)
        draft.lm_head.weight.mul_(SHARPEN)
    prompt = torch.tensor([[1, 3, 2]])
    with torch.no_grad():
        p = torch.softmax(target(prompt).logits[0, -1], -1)
        q = torch.softmax(draft(prompt).logits[0, -1], -1)
    assert (p - q).abs().max() > 0.2, "the test needs a draft that disagrees with the target"
    runs = 1000
    counts = torch.zeros(vocab)
    for seed in range(runs):
        result = speculative(target, draft, prompt, 2, strategy="sample", num_draft_tokens=1, seed=seed)
        counts[result.sequences[0, 3]] += 1
    expected = p * runs
    chi2 = float(((counts - expected) ** 2 / expected.clamp(min=1e-9)).sum())
    assert chi2 < 18.47, (counts.tolist(), expected.tolist())


def test_bad_speculative_input_is_named():
    target = gpt(2, 0)
    with pytest.raises(ConfigError, match="must share one"):
        speculative(target, gpt(1, 1, vocab=30), torch.zeros(1, 3, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match="num_draft_tokens must be an int >= 1"):
        speculative(target, target, torch.zeros(1, 3, dtype=torch.long), 4, num_draft_tokens=0)
    with pytest.raises(qkv.errors.ShapeError, match="one prompt"):
        speculative(target, target, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(qkv.errors.ShapeError, match="one prompt"):
        speculative(target, target, [torch.zeros(3, dtype=torch.long)], 4)
    for option in ({"repetition_penalty": 1.2}, {"top_k": 3}, {"strategy": "beam"}, {"use_cache": False}):
        with pytest.raises(ConfigError, match="speculative decoding"):
            speculative(target, target, torch.zeros(1, 3, dtype=torch.long), 4, **option)
