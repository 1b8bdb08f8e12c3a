"""No host syncs on hot paths: values read back from the device (``.item()``, ``int(t)``, ``bool(t)``, ...) happen
once per call, never once per decoding step or per attention call. On a GPU each such read waits for the device;
here they are counted on the CPU, where the code takes the same path."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import qkv
from qkv.attention import MultiHeadAttention
from qkv.models.gpt import POSITIONS

READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist"}


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def reads(fn) -> int:
    with CountHostReads() as counter:
        fn()
    return counter.count


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_decoding_reads_back_a_constant_number_of_values_whatever_the_length(positions, strategy):
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=32, max_seq_len=64, num_layers=2, num_heads=2, embed_dim=16)
    config.positions = positions
    model = qkv.models.GPT(config).eval()
    prompt = torch.randint(0, 32, (2, 5))
    short = reads(lambda: qkv.generate(model, prompt, max_new_tokens=4, strategy=strategy, seed=1))
    long = reads(lambda: qkv.generate(model, prompt, max_new_tokens=40, strategy=strategy, seed=1))
    assert long == short, f"{long - short} more reads for 36 more steps: a read per step"


@pytest.mark.parametrize("backend", ["fused", "chunked", "reference"])
def test_an_attention_call_with_a_padding_mask_reads_nothing_back(backend):
    attn = MultiHeadAttention(16, 2, backend=backend)
    x = torch.randn(3, 7, 16)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 4:] = False
    keep[2, :] = False  # a row with nothing to attend to: zeros, found without asking the host
    attn(x, key_mask=keep)  # warm-up (lazy initialisation may read)
    assert reads(lambda: attn(x, key_mask=keep)) == 0
    out, _ = attn(x, key_mask=keep)
    assert torch.isfinite(out).all()
