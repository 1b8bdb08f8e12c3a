"""Every backend against an independent float64 oracle, forward and backward."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.attention import make_score
from qkv.attention.backends import choose_backend
from qkv.attention.backends.chunked import MAX_TILE_PAIRS, _dropout_keep, _Plan, chunked_attention, plan_tiles
from qkv.attention.backends.tiles import merge_rows
from qkv.attention.call import build_call
from qkv.attention.masks import Span
from tests.conftest import FP32, FP32_TIGHT, band, plain_attention

BACKENDS = ["reference", "chunked", "fused"]


def _inputs(b=2, h=4, kvh=2, lq=9, lk=13, d=8, dv=8, dtype=torch.float32):
    q = torch.randn(b, h, lq, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, kvh, lk, d, dtype=dtype, requires_grad=True)
    v = torch.randn(b, kvh, lk, dv, dtype=dtype, requires_grad=True)
    return q, k, v


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


def _mask(kind, b, h, lq, lk):
    if kind is None:
        return None
    if kind == "padding":
        lengths = torch.tensor([lk, max(1, lk // 2)])[:b]
        return qkv.attention.padding_mask_tensor(lengths, lk)
    m = torch.rand(b, 1, lq, lk) > 0.3
    m[0, 0, 1] = False  # a fully masked row
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("causal", "window"), [(False, None), (True, None), (False, 2), (True, 3), (False, (1, 4)), (True, (5, 0))]
)
@pytest.mark.parametrize("mask_kind", [None, "padding", "random"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_backend_matches_float64_oracle(backend, causal, window, mask_kind, with_bias):
    q, k, v = _inputs()
    b, h, lq, lk = 2, 4, q.shape[2], k.shape[2]
    mask = _mask(mask_kind, b, h, lq, lk)
    bias = torch.randn(1, h, lq, lk, requires_grad=True) if with_bias else None
    out, weights = qkv.attend(
        q, k, v, mask, causal=causal, window=window, bias=bias, backend=backend, return_weights=True
    )
    allowed = band(lq, lk, causal, window)
    if mask is not None:
        allowed = allowed & mask
    ref_out, ref_w = plain_attention(q, k, v, allowed, bias)
    torch.testing.assert_close(out.double(), ref_out, **FP32)
    torch.testing.assert_close(weights.double(), ref_w, **FP32)
    inputs = [q, k, v] + ([bias] if with_bias else [])
    for got, want in zip(_grads(out, inputs), _grads(ref_out, inputs)):
        torch.testing.assert_close(got.double(), want.double(), **FP32)


def _score_oracle(name, module, q, k):
    """Each parametric score written out from its formula (float64)."""
    q, k = q.double(), k.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    if name == "cosine":
        return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    if name == "general":
        return q @ module.weight.double() @ k.transpose(-2, -1)
    if name == "additive":
        wq = q @ module.query_proj.weight.double().t() + module.query_proj.bias.double()
        wk = k @ module.key_proj.weight.double().t()
        return torch.einsum(
            "bhqkd,d->bhqk", torch.tanh(wq[..., :, None, :] + wk[..., None, :, :]), module.v.weight.double()[0]
        )
    if name == "location":
        return (q @ module.proj.weight.double().t() + module.proj.bias.double())[..., : k.shape[2]]
    return q @ k.transpose(-2, -1)  # dot


@pytest.mark.parametrize("name", ["dot", "cosine", "general", "additive", "location"])
@pytest.mark.parametrize("backend", ["reference", "chunked", "auto"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_score_on_every_backend(name, backend, causal):
    q, k, v = _inputs(lq=7, lk=11)
    kwargs = {
        "general": {"q_dim": 8},
        "additive": {"q_dim": 8, "hidden_dim": 6},
        "location": {"q_dim": 8, "max_len": 16},
    }
    score = make_score(name, **kwargs[name]) if name in kwargs else name
    out, _ = qkv.attend(q, k, v, causal=causal, score=score, backend=backend)
    module = score if not isinstance(score, str) else None
    raw = _score_oracle(name, module, q, k)
    ref_out, _ = plain_attention(q, k, v, band(7, 11, causal, None), scores=raw)
    torch.testing.assert_close(out.double(), ref_out, **FP32)
    params = list(module.parameters()) if module is not None else []
    inputs = [q, k, v, *params]
    got = torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
    want = torch.autograd.grad(ref_out, inputs, torch.ones_like(ref_out), allow_unused=True)
    for a, b in zip(got, want):
        if b is None:  # location scores ignore the key vectors
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a.double(), b.double(), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_are_zero_and_nan_free(backend):
    q, k, v = _inputs(lq=5, lk=5)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[:, :, 2] = False
    mask[1] = False  # a whole sequence with nothing to attend to
    out, w = qkv.attend(q, k, v, mask, backend=backend, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert out[:, :, 2].abs().max() == 0 and w[:, :, 2].abs().max() == 0
    assert out[1].abs().max() == 0
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0][:, :, 2].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_with_minus_inf_rows_is_nan_free(backend):
    q, k, v = _inputs(lq=4, lk=4)
    bias = torch.zeros(1, 1, 4, 4)
    bias[..., 0, :] = float("-inf")
    out, _ = qkv.attend(q, k, v, bias=bias, backend=backend)
    assert torch.isfinite(out).all() and out[:, :, 0].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_hf_style_finfo_min_bias_gives_what_the_plain_softmax_gives(backend):
    """Transformers masks with finfo.min added to the scores, not -inf: a row masked that way everywhere is not
    empty but uniform, on every backend (no backend may rescale such a bias into -inf)."""
    q, k, v = _inputs(lq=4, lk=6)
    bias = torch.zeros(1, 1, 4, 6)
    bias[..., 1, :] = torch.finfo(torch.float32).min
    bias[..., 2, 3:] = torch.finfo(torch.float32).min
    out, _ = qkv.attend(q, k, v, bias=bias, backend=backend)
    ref, _ = plain_attention(q, k, v, bias=bias)
    torch.testing.assert_close(out.double(), ref, **FP32)
    group = q.shape[1] // v.shape[1]
    uniform = v.double().repeat_interleave(group, dim=1).mean(dim=2)
    torch.testing.assert_close(out[:, :, 1].double(), uniform, **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_finite_and_close(backend, dtype):
    q, k, v = _inputs(lq=33, lk=33, d=16, dv=16)
    out, _ = qkv.attend(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, backend=backend)
    ref, _ = plain_attention(q, k, v, band(33, 33, True, None))
    assert out.dtype == dtype and torch.isfinite(out).all()
    # bf16 has 8 mantissa bits: inputs alone are rounded by ~4e-3 relative
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


def test_fused_matches_pytorch_sdpa_directly():
    q, k, v = _inputs(lq=6, lk=10)
    # GQA with enable_gqa
    ours, _ = qkv.attend(q, k, v, backend="fused")
    theirs = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **FP32_TIGHT)
    # a bool mask keeps its polarity: True = may attend in both
    mask = torch.rand(2, 1, 6, 10) > 0.2
    ours, _ = qkv.attend(q, k, v, mask, backend="fused")
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **FP32_TIGHT)
    # causal with q_len < k_len: ours is aligned to the end of the keys, i.e. tril with offset k_len - q_len
    ours, _ = qkv.attend(q, k, v, causal=True, backend="fused")
    end_aligned = torch.ones(6, 10, dtype=torch.bool).tril(diagonal=10 - 6)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=end_aligned, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **FP32_TIGHT)
    # q_len == k_len causal is SDPA's is_causal
    q2, k2, v2 = _inputs(lq=8, lk=8)
    ours, _ = qkv.attend(q2, k2, v2, causal=True, scale=0.3, backend="fused")
    theirs = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(ours, theirs, **FP32_TIGHT)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_chunked_gradcheck(score):
    torch.manual_seed(3)
    q, k, v = (t.detach().double().requires_grad_() for t in _inputs(b=1, h=2, kvh=1, lq=5, lk=7, d=3, dv=2))
    bias = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 5, 7) > 0.2
    module = make_score("additive", q_dim=3, hidden_dim=4).double() if score == "additive" else score

    def run(q, k, v, bias):
        call = build_call(
            q,
            k,
            v,
            mask,
            causal=True,
            window=(4, 0),
            bias=bias,
            score=module,
            scale=None,
            dropout=0.0,
            return_weights=False,
        )
        return chunked_attention(call, block_q=2, block_k=3)[0]

    assert torch.autograd.gradcheck(run, (q, k, v, bias))


def test_chunked_gradcheck_with_dropout():
    q, k, v = (t.detach().double().requires_grad_() for t in _inputs(b=1, h=2, kvh=2, lq=4, lk=6, d=3, dv=3))

    def run(q, k, v):
        torch.manual_seed(7)  # the dropout seed is drawn from the global generator: fix it per evaluation
        call = build_call(
            q,
            k,
            v,
            None,
            causal=False,
            window=None,
            bias=None,
            score="scaled_dot",
            scale=None,
            dropout=0.3,
            return_weights=False,
        )
        return chunked_attention(call, block_q=2, block_k=2)[0]

    assert torch.autograd.gradcheck(run, (q, k, v))


def test_chunked_dropout_equals_reference_with_same_keep_mask():
    q, k, v = _inputs(b=1, h=2, kvh=2, lq=6, lk=8)
    p = 0.25
    torch.manual_seed(11)
    call = build_call(
        q,
        k,
        v,
        None,
        causal=True,
        window=None,
        bias=None,
        score="scaled_dot",
        scale=None,
        dropout=p,
        return_weights=False,
    )
    out, _ = chunked_attention(call, block_q=4, block_k=4)
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # the draw chunked_attention made
    tiles = merge_rows(plan_tiles(6, 8, Span(None, 0), 4, 4), MAX_TILE_PAIRS // 4)  # the tiles the call visits
    plan = _Plan(tiles, Span(None, 0), 8, 6, 2, 1, None, 1.0, p, seed)
    keep = torch.zeros(1, 2, 6, 8)
    for index, tile in enumerate(tiles):
        shape = torch.Size((1, 2, 1, tile.q1 - tile.q0, tile.k1 - tile.k0))
        keep[..., tile.q0 : tile.q1, tile.k0 : tile.k1] = _dropout_keep(plan, index, shape, q.device).float()[:, :, 0]
    _, w = plain_attention(q, k, v, band(6, 8, True, None))
    ref = (w * keep.double() / (1 - p)) @ v.double()
    torch.testing.assert_close(out.double(), ref, **FP32)
    for a, b in zip(_grads(out, [q, k, v]), _grads(ref, [q, k, v])):
        torch.testing.assert_close(a.double(), b.double(), **FP32)


@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (7, 7), (3, 20), (20, 20), (64, 100)])
@pytest.mark.parametrize("left", [None, 0, 2, 9])
@pytest.mark.parametrize("right", [None, 0, 3])
def test_tile_plan_covers_exactly_the_allowed_pairs(lq, lk, left, right):
    span = Span(left, right)
    covered = torch.zeros(lq, lk, dtype=torch.int64)
    unmasked = torch.zeros(lq, lk, dtype=torch.bool)
    for t in plan_tiles(lq, lk, span, 4, 5):
        covered[t.q0 : t.q1, t.k0 : t.k1] += 1
        if not t.masked:
            unmasked[t.q0 : t.q1, t.k0 : t.k1] = True
    dense = span.dense(lq, lk)
    dense = torch.ones(lq, lk, dtype=torch.bool) if dense is None else dense
    assert covered.max() <= 1, "a pair was visited twice"
    assert (covered.bool() | ~dense).all(), "an allowed pair was skipped"
    assert not (unmasked & ~dense).any(), "a tile marked unmasked contains a disallowed pair"


@pytest.mark.parametrize("max_keys", [5, 12, 20, 1000])
def test_joined_tiles_cover_the_same_pairs_within_the_width(max_keys):
    tiles = plan_tiles(64, 100, Span(29, 3), 4, 5)
    joined = merge_rows(tiles, max_keys)
    assert [piece for t in joined for piece in t.pieces()] == tiles  # every tile once, in order
    assert len(joined) < len(tiles) or max_keys == 5
    for t in joined:
        pieces = t.pieces()
        assert all(p.q0 == t.q0 and p.q1 == t.q1 for p in pieces)
        assert [p.k0 for p in pieces[1:]] == [p.k1 for p in pieces[:-1]]  # adjacent keys
        assert (t.k0, t.k1) == (pieces[0].k0, pieces[-1].k1)
        assert t.k1 - t.k0 <= max(max_keys, 5)
        assert t.masked == any(p.masked for p in pieces)
    causal = merge_rows(plan_tiles(32, 32, Span(None, 0), 4, 4), 8)
    # cut from the right: in every row but the first the diagonal block is joined with the one before it
    assert [(t.k0, t.k1) for t in causal if t.k1 == t.q1] == [(0, 4)] + [(q0 - 4, q0 + 4) for q0 in range(4, 32, 4)]


def test_a_window_joins_each_row_block_into_one_tile_and_keeps_its_gradients():
    """Window 200 over 128-row blocks (the windowed default): each row block's tiles joined into one of at most
    MAX_TILE_PAIRS, the band applied on its edge pieces only; forward and backward equal the reference."""
    tiles = merge_rows(plan_tiles(700, 700, Span(199, 0), 128, 128), MAX_TILE_PAIRS // 128)
    assert len(tiles) == 6 and max(len(t.pieces()) for t in tiles) == 3
    q, k, v = _inputs(b=1, h=4, kvh=2, lq=700, lk=700, d=16, dv=16)
    out, _ = qkv.attend(q, k, v, causal=True, window=200, backend="chunked")
    ref, _ = plain_attention(q, k, v, band(700, 700, True, 200))
    torch.testing.assert_close(out.double(), ref, **FP32)
    for a, b in zip(_grads(out, [q, k, v]), _grads(ref, [q, k, v])):
        torch.testing.assert_close(a.double(), b.double(), **FP32)


def test_window_skips_blocks():
    tiles = plan_tiles(4096, 4096, Span(256, 0), 256, 256)
    visited = sum((t.q1 - t.q0) * (t.k1 - t.k0) for t in tiles)
    assert visited < 4096 * (256 + 2 * 256)  # O(N · window), not O(N²)


def test_auto_chooser_rules():
    def call(lq=16, lk=16, score="scaled_dot", window=None, causal=False, weights=False):
        q, k, v = (torch.randn(1, 1, n, 8) for n in (lq, lk, lk))
        if not isinstance(score, str):
            pass
        return build_call(
            q,
            k,
            v,
            None,
            causal=causal,
            window=window,
            bias=None,
            score=score,
            scale=None,
            dropout=0.0,
            return_weights=weights,
        )

    assert choose_backend(call()) == "fused"
    assert choose_backend(call(weights=True)) == "reference"
    assert choose_backend(call(lq=4096, lk=4096, window=256, causal=True)) == "chunked"
    assert choose_backend(call(lq=64, lk=64, window=8)) == "fused"  # too short for block skipping to pay
    assert choose_backend(call(score=make_score("additive", q_dim=8))) == "reference"
    assert choose_backend(call(lq=512, lk=512, score=make_score("additive", q_dim=8))) == "chunked"
    assert choose_backend(call(lq=4096, lk=4096, weights=True)) == "chunked"


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_zero_length_inputs(backend):
    for lq, lk in [(0, 5), (5, 0), (0, 0)]:
        q, k, v = _inputs(lq=lq, lk=lk)
        out, w = qkv.attend(q, k, v, backend=backend, return_weights=True)
        assert out.shape == (2, 4, lq, 8) and w.shape == (2, 4, lq, lk)
        assert not out.abs().any()
        out.sum().backward()
    q, k, v = _inputs(b=0)
    out, _ = qkv.attend(q, k, v, backend=backend)
    assert out.shape == (0, 4, 9, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_and_identical_keys(backend):
    q, k, v = _inputs(lq=4, lk=6)
    out, _ = qkv.attend(q.detach() * 1e4, k, v, backend=backend)
    ref, _ = plain_attention(q * 1e4, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, **FP32)
    same = k.detach()[:, :, :1].expand_as(k)
    out, w = qkv.attend(q, same, v, backend=backend, return_weights=True)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 6), **FP32_TIGHT)


def test_backends_agree_on_larger_gqa_inputs_with_many_tiles():
    """Large enough that the chunked backend uses several tiles with its default block sizes."""
    q, k, v = _inputs(b=1, h=4, kvh=1, lq=600, lk=700, d=16, dv=16)
    for causal, window in itertools.product([False, True], [None, 100]):
        outs = [qkv.attend(q, k, v, causal=causal, window=window, backend=b)[0] for b in BACKENDS]
        ref, _ = plain_attention(q, k, v, band(600, 700, causal, window))
        for out in outs:
            torch.testing.assert_close(out.double(), ref, **FP32)
