"""MultiHeadAttention against torch.nn.MultiheadAttention, GQA by hand, and KV-cache decoding."""

from __future__ import annotations

import pytest
import torch

import qkv
from tests.conftest import FP32, FP32_TIGHT, plain_attention


def _torch_twin(ours: qkv.MultiHeadAttention, kdim=None, vdim=None) -> torch.nn.MultiheadAttention:
    theirs = torch.nn.MultiheadAttention(ours.embed_dim, ours.num_heads, batch_first=True, kdim=kdim, vdim=vdim)
    with torch.no_grad():
        if kdim is None:
            theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        else:
            theirs.q_proj_weight.copy_(ours.q_proj.weight)
            theirs.k_proj_weight.copy_(ours.k_proj.weight)
            theirs.v_proj_weight.copy_(ours.v_proj.weight)
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return theirs


@pytest.mark.parametrize("backend", ["reference", "chunked", "fused", "auto"])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch(backend, causal):
    ours = qkv.MultiHeadAttention(32, 4, backend=backend)
    theirs = _torch_twin(ours)
    x = torch.randn(3, 7, 32, requires_grad=True)
    keep = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 6 + [False]])
    out, w = ours(x, key_mask=keep, causal=causal, return_weights=True)
    # torch's polarity is the opposite: True = ignore
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None
    ref, ref_w = theirs(x, x, x, key_padding_mask=~keep, attn_mask=blocked, average_attn_weights=False)
    torch.testing.assert_close(out, ref, **FP32)
    torch.testing.assert_close(w, ref_w, **FP32)
    g = torch.randn_like(out)
    ours_grads = torch.autograd.grad(out, [x, ours.q_proj.weight, ours.out_proj.weight], g)
    theirs_grads = torch.autograd.grad(ref, [x, theirs.in_proj_weight, theirs.out_proj.weight], g)
    torch.testing.assert_close(ours_grads[0], theirs_grads[0], **FP32)
    torch.testing.assert_close(ours_grads[1], theirs_grads[1][:32], **FP32)
    torch.testing.assert_close(ours_grads[2], theirs_grads[2], **FP32)


def test_cross_attention_with_other_dims_matches_torch():
    ours = qkv.MultiHeadAttention(32, 4, kdim=12, vdim=20)
    theirs = _torch_twin(ours, kdim=12, vdim=20)
    x, mem_k, mem_v = torch.randn(2, 5, 32), torch.randn(2, 9, 12), torch.randn(2, 9, 20)
    out, w = ours(x, mem_k, mem_v, return_weights=True)
    ref, ref_w = theirs(x, mem_k, mem_v, average_attn_weights=False)
    torch.testing.assert_close(out, ref, **FP32)
    torch.testing.assert_close(w, ref_w, **FP32)


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_query_attention_by_hand(num_kv_heads):
    mha = qkv.MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, proj_bias=False)
    x = torch.randn(2, 6, 32)
    out, _ = mha(x, causal=True)
    q = (x @ mha.q_proj.weight.t()).view(2, 6, 4, 8).transpose(1, 2)
    k = (x @ mha.k_proj.weight.t()).view(2, 6, num_kv_heads, 8).transpose(1, 2)
    v = (x @ mha.v_proj.weight.t()).view(2, 6, num_kv_heads, 8).transpose(1, 2)
    ref, _ = plain_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    ref = ref.transpose(1, 2).reshape(2, 6, 32).float() @ mha.out_proj.weight.t()
    torch.testing.assert_close(out, ref, **FP32)


@pytest.mark.parametrize(("num_kv_heads", "rotary"), [(4, False), (2, True), (1, True)])
def test_kv_cache_decoding_equals_full_causal_forward(num_kv_heads, rotary):
    mha = qkv.MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, rotary=rotary).eval()
    x = torch.randn(2, 10, 32)
    full, _ = mha(x, causal=True)
    cache = qkv.KVCache(1, 2, num_kv_heads, 16, 8)
    prefix, _ = mha(x[:, :4], causal=True, cache=cache)  # a prompt of 4, then one token at a time
    steps = [prefix] + [mha(x[:, t : t + 1], causal=True, cache=cache)[0] for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)
    assert cache.seq_len() == 10


def test_kv_cache_reorder_and_reset():
    cache = qkv.KVCache(2, 3, 1, 8, 4)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 4)
    cache.update(1, k, k)
    cache.reorder(torch.tensor([2, 2, 0]))
    keys, _ = cache.update(1, torch.zeros(3, 1, 1, 4), torch.zeros(3, 1, 1, 4))
    assert keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0] and keys.shape == (3, 1, 3, 4)
    assert cache.seq_len(0) == 0 and cache.seq_len(1) == 3
    cache.reset()
    assert cache.seq_len(1) == 0


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_kv_cache_reorders_like_index_select_and_allocates_nothing_after_the_first_time(grad):
    """Without autograd (decoding) updates write through each layer's kept views, which must follow the buffers
    that reorder swaps in; with it, through fresh ones."""
    torch.manual_seed(0)
    with torch.set_grad_enabled(grad):
        cache = qkv.KVCache(2, 4, 2, 16, 3)
        expected_k, expected_v = torch.zeros(2, 4, 2, 0, 3), torch.zeros(2, 4, 2, 0, 3)
        buffers = set()
        for step in range(6):
            k, v = torch.randn(2, 4, 2, 1, 3), torch.randn(2, 4, 2, 1, 3)
            for layer in range(2):
                keys, values = cache.update(layer, k[layer], v[layer])
                assert (
                    torch.equal(keys[:, :, step], k[layer, :, :, 0]) and keys.data_ptr() == cache.keys[layer].data_ptr()
                )
            expected_k, expected_v = torch.cat([expected_k, k], 3), torch.cat([expected_v, v], 3)
            rows = torch.randint(0, 4, (4,))
            cache.reorder(rows)
            expected_k, expected_v = expected_k[:, rows], expected_v[:, rows]
            assert torch.equal(cache.keys[:, :, :, : step + 1], expected_k)
            assert torch.equal(cache.values[:, :, :, : step + 1], expected_v)
            buffers.add(cache.keys.data_ptr())
    assert len(buffers) == 2  # the two buffers take turns


def test_kv_cache_made_without_autograd_passes_gradients_to_keys_and_values():
    with torch.no_grad():
        cache = qkv.KVCache(1, 1, 2, 8, 4)
        cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    k, v = torch.randn(1, 2, 1, 4, requires_grad=True), torch.randn(1, 2, 1, 4, requires_grad=True)
    keys, values = cache.update(0, k, v)
    (keys * 2 + values * 3).sum().backward()
    assert torch.equal(k.grad, torch.full_like(k, 2.0)) and torch.equal(v.grad, torch.full_like(v, 3.0))
    assert torch.equal(keys[:, :, :3], torch.ones(1, 2, 3, 4)) and torch.equal(keys[:, :, 3:], k.detach())


def test_parametric_score_inside_multi_head():
    mha = qkv.MultiHeadAttention(16, 2, score="additive")
    out, w = mha(torch.randn(2, 5, 16), return_weights=True)
    assert out.shape == (2, 5, 16) and torch.allclose(w.sum(-1), torch.ones(2, 2, 5))
    assert any("score" in name for name, _ in mha.named_parameters())


def test_weights_derived_inside_frozen_weights_are_never_stale():
    """A fused optimizer updates weights in place; nothing derived before (stacked QKV, transposed LM head) leaks."""
    import copy

    from qkv.attention import frozen_weights
    from qkv.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=30, max_seq_len=8, num_layers=1, embed_dim=16, num_heads=2))
    x = torch.randint(0, 30, (2, 8))
    with torch.no_grad(), frozen_weights():
        before = model(x).logits
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(x).logits.sum().backward()
    opt.step()
    fresh = copy.deepcopy(model)  # (derived tensors are kept beside the modules: the copy has none)
    with torch.no_grad():
        expected = fresh(x).logits
        plain = model(x).logits
        with frozen_weights():
            frozen = model(x).logits
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(plain, expected, **FP32_TIGHT)
    torch.testing.assert_close(frozen, expected, **FP32_TIGHT)


def test_a_generation_of_ones_own_keeps_derived_weights_across_contexts():
    """frozen_weights(generation) reuses what an earlier context with the same generation derived (the very same
    tensor); a plain context never does."""
    from qkv.attention.frozen import FrozenLinear, frozen_weights, kept, new_generation

    layer, x = FrozenLinear(5, 8), torch.randn(1, 5)  # (a widening layer: narrowing ones keep F.linear's layout)

    def derived_weight(generation=None):
        with torch.no_grad(), frozen_weights(generation):
            layer(x)
        return kept(layer, "weight_t")

    assert derived_weight() is not derived_weight()
    own = new_generation()
    first = derived_weight(own)
    assert derived_weight(own) is first and derived_weight(new_generation()) is not first


@pytest.mark.parametrize(("width_in", "width_out"), [(8, 5), (5, 8)])
def test_frozen_linear_is_a_linear_that_honours_hooks_on_its_fast_path(width_in, width_out):
    """FrozenLinear: nn.Linear's numbers in and out of frozen_weights() (where a widening layer's cached (in, out)
    weight serves a few rows, and a narrowing one keeps F.linear's layout), and a hook on it runs even there (its
    call skips nn.Module's machinery only when nothing is hooked)."""
    from qkv.attention.frozen import FrozenLinear, frozen_weights, kept

    torch.manual_seed(0)
    layer = FrozenLinear(width_in, width_out)
    plain = torch.nn.Linear(width_in, width_out)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(1, 1, width_in)
    seen = []
    with torch.no_grad(), frozen_weights():
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-6, atol=1e-6)
        assert (kept(layer, "weight_t") is not None) == (width_out >= width_in)
        handle = layer.register_forward_hook(lambda _m, _a, out: seen.append(out.shape) or out * 0)
        assert torch.equal(layer(x), torch.zeros(1, 1, width_out)) and seen == [(1, 1, width_out)]
        handle.remove()
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_modules_called_directly_still_run_every_hook_and_compile(family):
    """DirectCall modules (norms, feed-forwards, attention, blocks, the no-op dropout, the Q/K/V projections) skip
    nn.Module.__call__ only while nothing would run around them: a forward hook and a pre-hook on each, a
    process-wide module hook and ``Module.compile()`` all still run, and the outputs are those of the plain route."""
    from torch.nn.modules.module import register_module_forward_hook

    from qkv.attention.hooks import DirectCall
    from qkv.attention.multi_head import attention_modules

    torch.manual_seed(0)
    extra = {"norm": "rms", "feed_forward": "swiglu", "positions": "rotary"} if family == "llama" else {}
    model = qkv.models.GPT(
        qkv.models.GPTConfig(vocab_size=32, max_seq_len=16, num_layers=2, num_heads=2, embed_dim=32, **extra)
    ).eval()
    ids = torch.randint(0, 32, (1, 6))
    direct = [m for m in model.modules() if isinstance(m, DirectCall)]
    kinds = {type(m).__name__ for m in direct}
    assert {"PreNormBlock", "MultiHeadAttention", "FrozenLinear", "NoDropout"} <= kinds
    assert ({"RMSNorm", "SwiGLU"} if family == "llama" else {"LayerNorm", "FeedForward"}) <= kinds
    with torch.no_grad():
        expected = model(ids).logits
        # every one runs, self-attention's Q/K/V layers included: multiplied stacked while unhooked, each is called
        # as itself once a hook listens to it
        running = {id(m) for m in direct}
        assert {id(m.q_proj) for m in attention_modules(model)} <= running
        pre: set[int] = set()
        post: set[int] = set()
        handles = [m.register_forward_pre_hook(lambda m, a: pre.add(id(m))) for m in direct]
        handles += [m.register_forward_hook(lambda m, a, o: post.add(id(m))) for m in direct]
        hooked = model(ids).logits
        for handle in handles:
            handle.remove()
        assert pre == post == running
        seen: set[int] = set()
        handle = register_module_forward_hook(lambda m, a, o: seen.add(id(m)))
        try:
            model(ids)
        finally:
            handle.remove()
        assert running <= seen
        compiled: list[int] = []

        def backend(graph, example_inputs):
            compiled.append(len(example_inputs))
            return graph.forward

        model.blocks[0].compile(backend=backend)
        via_compile = model(ids).logits
    assert compiled, "Module.compile() was bypassed"
    # (hooked, Q/K/V are three products instead of one stacked: the same sums, which may round differently)
    torch.testing.assert_close(hooked, expected, **FP32_TIGHT)
    torch.testing.assert_close(via_compile, expected, **FP32_TIGHT)


@pytest.mark.parametrize("rows", [1, 2, 15, 256, 257])
def test_a_few_rows_multiply_a_packed_weight_with_linears_numbers(rows):
    """Inside frozen_weights, fp32 products of 2 to PACKED_MAX_ROWS rows by a weight of PACKED_MIN_WEIGHTS or more
    run on a oneDNN-packed copy of it (kept for the next call); one row, longer inputs and small weights keep their
    layouts. Every route gives F.linear's numbers, for one layer and for Q/K/V stacked into one product."""
    from qkv.attention.frozen import (
        ONEDNN_AVAILABLE,
        PACKED_MAX_ROWS,
        PACKED_MIN_WEIGHTS,
        FrozenLinear,
        frozen_weights,
        kept,
        stacked_linear,
    )

    torch.manual_seed(0)
    width = 512
    assert width * width == PACKED_MIN_WEIGHTS  # the layer is just large enough, the small one just too small
    layer, others = FrozenLinear(width, width), (torch.nn.Linear(width, 64), torch.nn.Linear(width, 64, bias=False))
    small = FrozenLinear(width, width // 2 - 1)
    x = torch.randn(rows, width) * 3
    with torch.no_grad(), frozen_weights():
        out = layer(x)
        stacked = stacked_linear(x, layer, "qkv", (layer, *others))
        small(x)
        packs = ONEDNN_AVAILABLE and 2 <= rows <= PACKED_MAX_ROWS
        assert (kept(layer, "packed") is not None) == packs and (kept(layer, "qkv_packed") is not None) == packs
        assert kept(small, "packed") is None
        with torch.no_grad():
            reference = torch.nn.functional.linear(x, layer.weight, layer.bias)
            references = torch.cat([reference] + [torch.nn.functional.linear(x, o.weight, o.bias) for o in others], -1)
        torch.testing.assert_close(out, reference, **FP32)
        torch.testing.assert_close(stacked, references, **FP32)
        assert torch.equal(layer(x), out)  # the kept copy serves the next call


@pytest.mark.parametrize("rows", [1, 2, 256, 257])
def test_bf16_products_pack_from_one_row_up_where_onednn_has_bf16_kernels(rows):
    """bf16 products of 1 to PACKED_MAX_ROWS rows (decoding's single rows included) run on a oneDNN-packed weight
    where oneDNN has bf16 kernels (BF16_PACKS), alone and stacked, each output the fp32 product of the bf16 operands
    and bias rounded once to bf16; the unpacked routes round the product, then its sum with the bias."""
    from qkv.attention.frozen import BF16_PACKS, PACKED_MAX_ROWS, FrozenLinear, frozen_weights, kept, stacked_linear

    torch.manual_seed(0)
    width = 512
    layers = (FrozenLinear(width, width, dtype=torch.bfloat16), torch.nn.Linear(width, 64, dtype=torch.bfloat16))
    x = (torch.randn(rows, width) * 3).bfloat16()
    with torch.no_grad(), frozen_weights():
        out = layers[0](x)
        stacked = stacked_linear(x, layers[0], "qkv", layers)
        packs = BF16_PACKS and rows <= PACKED_MAX_ROWS
        assert (kept(layers[0], "packed") is not None) == packs
        assert (kept(layers[0], "qkv_packed") is not None) == packs
        products = torch.cat([x.float() @ m.weight.float().t() for m in layers], -1)
        reference = products + torch.cat([m.bias.float() for m in layers])
    assert out.dtype == stacked.dtype == torch.bfloat16
    # one rounding to 8 significant bits (two without packing: the product's, then the sum's), and fp32 accumulation
    # in another order, tiny beside the sum of the terms' magnitudes
    rounded = (reference.abs() if packs else reference.abs() + products.abs()) * 2.0**-8
    floor = 1e-5 * torch.cat([x.float().abs() @ m.weight.float().abs().t() for m in layers], -1)
    assert ((stacked.float() - reference).abs() <= rounded + floor).all()
    assert ((out.float() - reference[:, :width]).abs() <= rounded[:, :width] + floor[:, :width]).all()


def test_a_model_used_inside_frozen_weights_still_deep_copies_and_saves(tmp_path):
    """Derived layouts (a oneDNN-packed weight cannot be copied at all) are kept beside the modules, so a deep copy
    and torch.save of a model that has decoded work, and give the same numbers."""
    import copy

    from qkv.attention.frozen import frozen_weights
    from qkv.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, max_seq_len=16, num_layers=1, num_heads=2, embed_dim=16)).eval()
    x = torch.randint(0, 50, (1, 8))
    with torch.no_grad(), frozen_weights():
        before = model(x).logits
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        for other in (clone, loaded):
            torch.testing.assert_close(other(x).logits, before, **FP32)
