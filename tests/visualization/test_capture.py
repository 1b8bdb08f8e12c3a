"""capture_attention: exact weights while the model runs fused, without changing what the model computes."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ConfigError
from qkv.models import GPT, BertConfig, BertEncoder, GPTConfig
from qkv.models.gpt import POSITIONS
from tests.conftest import FP32_TIGHT


def gpt(backend: str = "fused", **kw) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=40, max_seq_len=32, num_layers=3, num_heads=4, embed_dim=32, backend=backend)
    config.update(kw)
    return GPT(GPTConfig(**config)).eval()


@pytest.mark.parametrize("positions", POSITIONS)
def test_captured_weights_equal_the_reference_backend(positions):
    fused, reference = gpt("fused", positions=positions), gpt("reference", positions=positions)
    x = torch.randint(0, 40, (2, 20))
    with torch.no_grad():
        expected = reference(x, return_attention=True).attentions
        with qkv.capture_attention(fused) as cap:
            fused(x)
    for layer in range(3):
        torch.testing.assert_close(cap.weights(layer), expected[layer].float(), **FP32_TIGHT)
        torch.testing.assert_close(cap.weights(layer).sum(-1), torch.ones(2, 4, 20), **FP32_TIGHT)


def test_capturing_a_subset_changes_nothing_the_model_computes():
    model = gpt()
    x = torch.randint(0, 40, (2, 20))
    with torch.no_grad():
        plain = model(x).logits
        with qkv.capture_attention(model, layers=[1], heads=[0, 2]) as cap:
            captured = model(x).logits
    assert torch.equal(plain, captured)
    assert sorted(cap.calls) == [1] and cap.weights(1).shape == (2, 2, 20, 20)
    full = gpt("reference")(x, return_attention=True).attentions[1]
    torch.testing.assert_close(cap.weights(1), full[:, [0, 2]].float(), **FP32_TIGHT)
    assert not model.blocks[1].attn.hook_pattern.active  # the hook is gone afterwards


def test_padding_positions_get_zero_weight():
    torch.manual_seed(0)
    model = BertEncoder(BertConfig(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64)).eval()
    ids = torch.randint(1, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad(), qkv.capture_attention(model) as cap:
        model(ids, mask)
    for layer in range(2):
        w = cap.weights(layer)
        assert w[1, :, :, 6:].abs().max() == 0
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9), **FP32_TIGHT)


def test_decoding_steps_append_rows_equal_to_the_full_pattern():
    model = gpt()
    x = torch.randint(0, 40, (1, 6))
    with qkv.capture_attention(model, layers=[2]) as cap:
        out = qkv.generate(model, x, max_new_tokens=8)
    with torch.no_grad():
        full = gpt("reference")(out[:, :-1], return_attention=True).attentions[2]
    torch.testing.assert_close(cap.weights(2), full.float(), **FP32_TIGHT)
    assert len(cap.calls[2]) == 8  # the prompt, then one row per new token but the last


def test_cross_attention_is_captured():
    mha = qkv.MultiHeadAttention(16, 2, backend="fused")
    x, memory = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    with torch.no_grad(), qkv.capture_attention(mha) as cap:
        mha(x, memory)
        _, expected = mha(x, memory, return_weights=True)
    torch.testing.assert_close(cap.weights(0)[:, :, :3], expected.float(), **FP32_TIGHT)
    assert cap.calls[0][0].shape == (1, 2, 3, 5) and cap.names == {0: ""}  # (the module itself: its path is "")


def test_bad_requests():
    with pytest.raises(ConfigError, match="has 3 attention layers"), qkv.capture_attention(gpt(), layers=[5]):
        pass
    with pytest.raises(ConfigError, match="no qkv MultiHeadAttention"), qkv.capture_attention(torch.nn.Linear(2, 2)):
        pass


@pytest.mark.parametrize("eos", [None, 7])
@pytest.mark.parametrize("n", [1, 2])
def test_beam_search_capture_follows_each_returned_hypothesis(eos, n):
    """With the search's beam_indices, weights(layer) has one row per returned hypothesis: exactly the attention a
    plain forward pass over that hypothesis computes, though its rows moved between beams at every step."""
    model = gpt()
    x = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(3))
    with qkv.capture_attention(model, layers=[1]) as cap:
        out = qkv.generate(
            model, x, max_new_tokens=9, strategy="beam", num_beams=3, num_return_sequences=n, eos_token_id=eos,
            return_dict=True,
        )  # fmt: skip
    assert out.beam_indices.shape == (2 * n, out.sequences.shape[1] - 5)
    reference = gpt("reference")
    weights = cap.weights(1, out.beam_indices)
    assert weights.shape[0] == 2 * n
    for h in range(2 * n):
        row = out.sequences[h].tolist()
        end = row.index(eos, 5) + 1 if eos is not None and eos in row[5:] else len(row)
        with torch.no_grad():
            full = reference(out.sequences[h : h + 1, : end - 1], return_attention=True).attentions[1][0]
        torch.testing.assert_close(weights[h, :, : end - 1, : end - 1], full.float(), **FP32_TIGHT)
        # after a hypothesis ended, its steps are -1 and its rows zero
        ended = out.beam_indices[h, end - 5 :]
        assert (ended == -1).all() and (weights[h, :, end - 1 :] == 0).all()


def test_beam_indices_must_fit_the_recorded_calls():
    model = gpt()
    x = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(3))
    with qkv.capture_attention(model, layers=[0]) as cap:
        model(x)
    with pytest.raises(qkv.errors.ShapeError, match="at most 1 steps"):
        cap.weights(0, torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("positions", POSITIONS)
def test_captured_scores_are_the_softmax_input_of_the_weights(positions):
    """cap.scores(layer) is what the softmax received: -inf exactly above the causal diagonal (and for keys a cached
    row could not see yet), and its softmax, computed here by torch, is the captured weights."""
    model = gpt(positions=positions)
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad(), qkv.capture_attention(model, scores=True) as cap:
        model(x)
    future = torch.ones(12, 12, dtype=torch.bool).triu(1)
    for layer in range(3):
        scores = cap.scores(layer)
        assert scores.shape == (2, 4, 12, 12)
        assert torch.equal(torch.isneginf(scores), future.expand_as(scores))
        torch.testing.assert_close(torch.softmax(scores, -1), cap.weights(layer), **FP32_TIGHT)
    # after cached decoding steps the rows line up as for the weights, keys not yet seen are -inf
    with torch.no_grad(), qkv.capture_attention(model, layers=[0], scores=True) as cap:
        qkv.generate(model, x[:1, :5], max_new_tokens=3, strategy="greedy")
    scores = cap.scores(0)
    assert scores.shape == (1, 4, 7, 7)
    assert torch.equal(torch.isneginf(scores), torch.ones(7, 7, dtype=torch.bool).triu(1).expand_as(scores))
    torch.testing.assert_close(torch.softmax(scores, -1), cap.weights(0), **FP32_TIGHT)
