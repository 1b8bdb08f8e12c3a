"""The compiled decoding step: one graph, no graph break, one compilation for every length, and the same tokens."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import qkv
from qkv.decoding.stepper import compiled_for_decoding
from qkv.devices import cxx_compiler
from qkv.errors import ConfigError
from qkv.models.gpt import POSITIONS


def tiny_gpt(positions: str) -> qkv.models.GPT:
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=32, max_seq_len=64, num_layers=2, num_heads=4, num_kv_heads=2)
    config.embed_dim, config.positions = 32, positions
    return qkv.models.GPT(config).eval()


@pytest.mark.parametrize("positions", POSITIONS)
def test_a_decoding_step_is_one_graph_without_breaks(positions):
    model = tiny_gpt(positions)
    cache = model.new_cache(2)
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad(), qkv.attention.frozen.frozen_weights():  # as qkv.generate decodes
        model(ids, cache=cache)
        explained = torch._dynamo.explain(model)(ids[:, -1:], cache=cache)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_one_compilation_serves_every_length():
    """dynamic=True: the cache grows one position per step and the step is compiled once, not once per length
    (counted by dynamo's own CompileCounter backend, which runs the captured graph as is); each step's logits
    equal the plain model's on its own cache."""
    model = tiny_gpt("rotary")
    counter = CompileCounter()
    step = torch.compile(model, backend=counter, dynamic=True)
    plain_cache, traced_cache = model.new_cache(2), model.new_cache(2)
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad():
        model(ids, cache=plain_cache)
        model(ids, cache=traced_cache)
        for _ in range(20):
            token = torch.randint(0, 32, (2, 1))
            expected = model(token, cache=plain_cache).logits
            torch.testing.assert_close(step(token, cache=traced_cache).logits, expected, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1 and traced_cache.seq_len(0) == 25


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile needs a C++ compiler on the CPU")
@pytest.mark.parametrize("strategy", ["greedy", pytest.param("beam", marks=pytest.mark.slow)])  # (beam: slow job)
def test_compiled_decoding_gives_the_same_tokens(strategy):
    """Inductor-compiled steps (the real thing) against the plain model: the same tokens, and the model keeps
    one compiled module across calls."""
    model = tiny_gpt("rotary")
    prompt = torch.randint(0, 32, (2, 5))
    plain = qkv.generate(model, prompt, max_new_tokens=12, strategy=strategy)
    with pytest.warns(UserWarning, match="measured slower than plain decoding"):  # (on this CPU)
        compiled = qkv.generate(model, prompt, max_new_tokens=12, strategy=strategy, compile=True)
    assert torch.equal(compiled, plain)
    assert compiled_for_decoding(model) is compiled_for_decoding(model)
    if strategy == "greedy":
        streamed = torch.stack(list(qkv.generate_stream(model, prompt, max_new_tokens=12, compile=True)), dim=1)
        assert torch.equal(streamed, plain[:, 5:])


def test_compile_without_a_compiler_is_a_clear_error(monkeypatch):
    import qkv.devices

    monkeypatch.setattr(qkv.devices, "cxx_compiler", lambda: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        qkv.generate(tiny_gpt("learned"), torch.zeros(1, 2, dtype=torch.long), max_new_tokens=3, compile=True)
