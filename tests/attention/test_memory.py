"""Sizing before allocating: requests that could never fit are refused with their figure, before any allocation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qkv
from qkv.attention import KVCache
from qkv.attention.memory import activation_bytes, check_fits, device_memory_bytes, format_bytes
from qkv.errors import OutOfMemoryError


def test_a_kv_cache_larger_than_memory_is_refused_with_its_size():
    memory = device_memory_bytes()
    batch = 2 * memory // (2 * 4 * 4 * 128 * 32 * 4) + 1  # twice the machine's memory: 4 layers, 4 heads, fp32
    needed = 2 * 4 * batch * 4 * 128 * 32 * 4
    with pytest.raises(
        OutOfMemoryError, match=rf"KV cache for {batch} sequences .* needs at least {format_bytes(needed)}"
    ):
        KVCache(4, batch, 4, 128, 32)
    assert KVCache(4, 2, 4, 128, 32).keys.shape == (4, 2, 4, 128, 32)  # an ordinary one is made


def test_activation_bytes_counts_every_linear_and_embedding_output():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))
    assert activation_bytes(model, tokens=5) == 5 * (8 + 32 + 10) * 4
    assert activation_bytes(model.double(), tokens=5) == 5 * (8 + 32 + 10) * 8


def test_check_fits_names_both_figures_and_the_hint():
    check_fits(1000, "a small thing", "never shown")
    with pytest.raises(OutOfMemoryError, match=r"a big thing needs at least .* more than the .* this machine has; try"):
        check_fits(10 * device_memory_bytes(), "a big thing", "try less")


def test_generation_too_long_for_memory_is_refused_before_decoding():
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=8, max_seq_len=8, num_layers=1, num_heads=1, embed_dim=8))
    too_many = device_memory_bytes() // 8 + 1  # the ids alone (int64) would not fit
    with pytest.raises(OutOfMemoryError, match=f"max_new_tokens={too_many} for 1 sequence"):
        qkv.generate(model, torch.zeros(1, 1, dtype=torch.long), max_new_tokens=too_many)
