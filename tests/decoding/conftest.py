"""A tiny random GPT-2 in both libraries, for the decoding tests that compare with HuggingFace's generate."""

from __future__ import annotations

import pytest
import torch

import qkv


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """``(hf, ours)``: the same random 2-layer GPT-2 (vocabulary 40, context 128) as HF's model and qkv's."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=40)
    hf = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory)
    return hf, qkv.load_pretrained(directory)
