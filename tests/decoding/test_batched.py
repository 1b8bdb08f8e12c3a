"""Prompts of different lengths in one batch: each gets exactly the tokens it gets alone."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ShapeError
from qkv.models.gpt import POSITIONS

LENGTHS = (5, 1, 12, 8)


def model_with(positions: str, context: int = 64, **settings) -> qkv.models.GPT:
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=30, max_seq_len=context, num_layers=2, num_heads=4, embed_dim=32)
    config.positions = positions
    for key, value in settings.items():
        setattr(config, key, value)
    return qkv.models.GPT(config).eval()


def prompts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randint(1, 30, (n,), generator=g) for n in LENGTHS]


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_a_batch_of_prompts_gives_each_prompt_its_own_tokens(positions, use_cache):
    model = model_with(positions)
    batch = qkv.generate(model, prompts(), max_new_tokens=15, use_cache=use_cache)
    for prompt, row in zip(prompts(), batch):
        assert torch.equal(row, qkv.generate(model, prompt[None], max_new_tokens=15)[0])


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_past_the_context_the_window_slides_for_each_row(positions):
    model = model_with(positions, context=16)
    batch = qkv.generate(model, prompts(), max_new_tokens=20)
    for prompt, row in zip(prompts(), batch):
        assert torch.equal(row, qkv.generate(model, prompt[None], max_new_tokens=20)[0])


def test_beams_samples_and_a_llama_batch():
    model = model_with("rotary")
    for prompt, row in zip(prompts(), qkv.generate(model, prompts(), max_new_tokens=8, strategy="beam", num_beams=3)):
        assert torch.equal(row, qkv.generate(model, prompt[None], max_new_tokens=8, strategy="beam", num_beams=3)[0])
    samples = qkv.generate(model, prompts(), max_new_tokens=6, strategy="sample", seed=1, num_return_sequences=2)
    assert len(samples) == 2 * len(LENGTHS)
    assert [len(s) for s in samples] == [n + 6 for n in LENGTHS for _ in range(2)]
    llama = qkv.models.GPT(qkv.models.LlamaConfig(vocab_size=30, embed_dim=32, num_heads=4, num_kv_heads=2)).eval()
    for prompt, row in zip(prompts(), qkv.generate(llama, prompts(), max_new_tokens=10)):
        assert torch.equal(row, qkv.generate(llama, prompt[None], max_new_tokens=10)[0])


def test_bad_prompt_lists_are_named():
    model = model_with("learned")
    with pytest.raises(ShapeError, match="prompt 1 is empty"):
        qkv.generate(model, [torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], max_new_tokens=3)
    with pytest.raises(ShapeError, match="no prompts"):
        qkv.generate(model, [], max_new_tokens=3)
