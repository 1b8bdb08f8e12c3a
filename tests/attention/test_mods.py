"""Mask and score functions (FlexAttention's model): every backend against a float64 dense oracle, forward and
backward; tile classification against the dense mask's blocks; attention-gym's functions ported by copy."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qkv
from qkv.attention import mods
from qkv.attention.block_masks import EMPTY, FULL, PARTIAL, block_mask
from qkv.errors import BackendUnsupportedError, ConfigError, MaskError, ShapeError
from tests.conftest import FP32, band, plain_attention

BACKENDS = ["reference", "chunked", "fused", "auto"]


def _indices(b: int, h: int, lq: int, lk: int) -> tuple[torch.Tensor, ...]:
    """Broadcast index tensors written here, independently of qkv.attention.mods.index_grid."""
    off = lk - lq
    return (
        torch.arange(b)[:, None, None, None],
        torch.arange(h)[None, :, None, None],
        torch.arange(off, lk)[None, None, :, None],
        torch.arange(lk)[None, None, None, :],
    )


def _oracle(q, k, v, allowed, score_mod, scale, bias=None):
    """Dense float64 attention: scores, bias, the score function on the whole grid, the dense mask."""
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    group = h // k.shape[1]
    scores = q.double() @ k.double().repeat_interleave(group, 1).transpose(-2, -1) * scale
    if bias is not None:
        scores = scores + bias.double()
    if score_mod is not None:
        scores = score_mod(scores, *_indices(b, h, lq, lk))
    return plain_attention(q, k, v, allowed, scores=scores)


# ----------------------------------------------------------------------------------------------- random functions


@st.composite
def mods_case(draw):
    b = draw(st.integers(1, 2))
    kvh = draw(st.integers(1, 2))
    h = kvh * draw(st.integers(1, 2))
    lk = draw(st.integers(1, 70))
    lq = draw(st.sampled_from([lk, draw(st.integers(1, lk))]))
    mask_kind = draw(st.sampled_from([None, "table", "document", "prefix", "dilated", "window"]))
    score_kind = draw(st.sampled_from([None, "table", "alibi", "soft_cap", "t5"]))
    causal = draw(st.booleans())
    block = draw(st.sampled_from([4, 16, 128]))
    backend = draw(st.sampled_from(BACKENDS))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return b, h, kvh, lq, lk, mask_kind, score_kind, causal, block, backend, dtype, draw(st.integers(0, 2**16))


def _random_mask_mod(kind, b, h, lq, lk, g):
    if kind is None:
        return None
    if kind == "table":  # an arbitrary function: a random table read at the indices (per row and head, or shared)
        table = torch.rand(b if torch.rand(1, generator=g) < 0.5 else 1, h, lq, lk, generator=g) > 0.4
        table[..., 0, :] = False  # a query that sees nothing
        off = lk - lq

        def table_mask(bi, hi, qi, kvi):
            return table.expand(b, h, lq, lk)[bi, hi, qi - off, kvi]

        return table_mask
    if kind == "document":
        return mods.document(torch.randint(0, 3, (b, lk), generator=g).sort(-1).values, causal=False)
    if kind == "prefix":
        return mods.prefix_lm(torch.randint(0, lk + 1, (b,), generator=g))
    if kind == "dilated":
        return mods.dilated(int(torch.randint(1, 4, (1,), generator=g)), causal=False)
    return mods.sliding_window((int(torch.randint(0, 10, (1,), generator=g)),) * 2)


def _random_score_mod(kind, h, lq, lk, g, dtype):
    """The function and the tensors that must receive gradients through it."""
    if kind is None:
        return None, []
    if kind == "table":  # a captured tensor that needs a gradient, read at the indices
        table = torch.randn(h, lq, lk, generator=g, dtype=dtype).requires_grad_()
        off = lk - lq

        def table_score(s, bi, hi, qi, kvi):
            return s * 0.5 + table[hi, qi - off, kvi]

        return table_score, [table]
    if kind == "alibi":
        return mods.alibi(h), []
    if kind == "soft_cap":
        return mods.soft_cap(2.0), []
    t5 = mods.T5RelativeBias(h, num_buckets=8, max_distance=20).to(dtype)
    return t5, [t5.relative_attention_bias.weight]


@settings(max_examples=80)
@given(mods_case())
def test_mask_and_score_functions_agree_with_the_float64_oracle(case):
    b, h, kvh, lq, lk, mask_kind, score_kind, causal, block, backend, dtype, seed = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, 8, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(b, kvh, lk, 8, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(b, kvh, lk, 8, generator=g, dtype=dtype, requires_grad=True)
    mask_mod = _random_mask_mod(mask_kind, b, h, lq, lk, g)
    score_mod, tensors = _random_score_mod(score_kind, h, lq, lk, g, dtype)
    blocks = block_mask(mask_mod, b, h, lq, lk, block) if mask_mod is not None and block != 128 else None
    functions = {"block_mask": blocks} if blocks is not None else {"mask_mod": mask_mod}
    try:
        out, _ = qkv.attend(q, k, v, causal=causal, score_mod=score_mod, backend=backend, **functions)
    except BackendUnsupportedError:
        assert backend == "fused" and score_kind in ("soft_cap", "table")
        return
    allowed = band(lq, lk, causal, None)
    if mask_mod is not None:
        allowed = allowed & mask_mod(*_indices(b, h, lq, lk))
    ref, _ = _oracle(q, k, v, allowed, score_mod, 8**-0.5)
    tol = FP32 if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, **tol)
    inputs = [q, k, v, *tensors]
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, upstream.to(dtype), allow_unused=True)
    want = torch.autograd.grad(ref, inputs, upstream, allow_unused=True)
    for a, w in zip(got, want):
        if w is None:  # (a table entry no allowed pair reads)
            assert a is None or not a.any()
            continue
        assert a is not None and torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), w.double(), **tol)


def test_rows_with_no_allowed_key_give_zeros_and_finite_gradients_on_every_backend():
    q, k, v = (torch.randn(1, 2, 20, 4, requires_grad=True) for _ in range(3))

    def nothing_for_even_queries(b, h, q_idx, kv_idx):
        return (q_idx % 2 == 1) & (kv_idx <= q_idx)

    for backend in ("reference", "chunked", "fused"):
        out, _ = qkv.attend(q, k, v, mask_mod=nothing_for_even_queries, score_mod=mods.alibi(2), backend=backend)
        assert torch.equal(out[:, :, 0::2], torch.zeros_like(out[:, :, 0::2])), backend
        grads = torch.autograd.grad(out.sum(), [q, k, v])
        assert all(torch.isfinite(t).all() for t in grads), backend


# ------------------------------------------------------------------------------------------- tile classification


@settings(max_examples=60)
@given(
    st.sampled_from(["table", "document", "prefix", "dilated", "window"]),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 90),
    st.integers(1, 90),
    st.sampled_from([1, 3, 8, 32]),
    st.sampled_from([1, 5, 16]),
    st.integers(0, 2**16),
)
def test_tile_classes_equal_the_dense_masks_blocks(kind, b, h, lq, lk, bq, bk, seed):
    lq = min(lq, lk)
    g = torch.Generator().manual_seed(seed)
    mask_mod = _random_mask_mod(kind, b, h, lq, lk, g)
    blocks = block_mask(mask_mod, b, h, lq, lk, (bq, bk))
    dense = mask_mod(*_indices(b, h, lq, lk)).expand(b, h, lq, lk)
    for i in range(-(-lq // bq)):
        for j in range(-(-lk // bk)):
            tile = dense[:, :, i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
            want = FULL if tile.flatten(2).all(-1).all() else EMPTY if not tile.flatten(2).any(-1).any() else None
            per_row_head = blocks.classes[..., i, j].expand(b, h)
            for bi in range(b):
                for hi in range(h):
                    t = tile[bi, hi]
                    expected = FULL if t.all() else EMPTY if not t.any() else PARTIAL
                    assert int(per_row_head[bi, hi]) == expected, (bi, hi, i, j)
            if want is not None:
                assert int(blocks.tile_classes[i, j]) == want
    assert torch.equal(blocks.dense(), dense[: blocks.classes.shape[0], : blocks.classes.shape[1]])


def test_a_function_that_ignores_batch_and_heads_is_classified_once_for_all():
    blocks = block_mask(mods.causal(), 8, 16, 64, 64, 16)
    assert blocks.classes.shape == (1, 1, 4, 4)
    assert blocks.tile_classes.tolist() == [
        [PARTIAL, EMPTY, EMPTY, EMPTY],
        [FULL, PARTIAL, EMPTY, EMPTY],
        [FULL, FULL, PARTIAL, EMPTY],
        [FULL, FULL, FULL, PARTIAL],
    ]
    assert math.isclose(blocks.density(), 10 / 16)


def test_the_chunked_backend_visits_only_tiles_the_block_mask_keeps(monkeypatch):
    from qkv.attention.backends import chunked

    visited = []
    real = chunked._score_tile

    def spy(plan, qt, kt, k0, *buffer):
        visited.append(qt.shape[-2] * kt.shape[-2])  # pairs (tiles of one row may be joined into one)
        return real(plan, qt, kt, k0, *buffer)

    monkeypatch.setattr(chunked, "_score_tile", spy)
    doc = torch.arange(256) // 64  # 4 documents of 64 tokens
    blocks = block_mask(mods.document(doc), 1, 2, 256, 256, 32)
    q, k, v = (torch.randn(1, 2, 256, 8) for _ in range(3))
    out, _ = qkv.attend(q, k, v, block_mask=blocks, backend="chunked")
    # each document: 2x2 tiles of 32, of which the causal mask function leaves 3
    assert sum(visited) == 4 * 3 * 32 * 32
    ref, _ = plain_attention(q, k, v, blocks.dense()[0, 0])
    torch.testing.assert_close(out.double(), ref, **FP32)


def test_a_block_mask_is_reused_across_calls_and_refuses_another_shape():
    blocks = block_mask(mods.sliding_window(4), 1, 2, 32, 32, 8)
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    first, _ = qkv.attend(q, k, v, block_mask=blocks, backend="chunked")
    again, _ = qkv.attend(q * 2, k, v, block_mask=blocks, backend="chunked")
    assert not torch.equal(first, again)
    with pytest.raises(MaskError, match=r"made for \(batch, heads, q_len, k_len\) = \(1, 2, 32, 32\)"):
        qkv.attend(q[:, :, :16], k, v, block_mask=blocks)


def test_a_bare_mask_function_is_classified_once_per_shape_and_again_when_what_it_reads_changes(monkeypatch):
    from qkv.attention import block_masks

    made = []
    real = block_masks.block_mask

    def counting(*args, **kwargs):
        made.append(args[1:5])
        return real(*args, **kwargs)

    monkeypatch.setattr(block_masks, "block_mask", counting)
    doc = torch.arange(64) // 16
    mask_mod = mods.document(doc)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    for _ in range(3):  # three layers, say
        qkv.attend(q, k, v, mask_mod=mask_mod, backend="chunked")
    assert made == [(1, 2, 64, 64)]
    qkv.attend(q[:, :, :32], k[:, :, :32], v[:, :, :32], mask_mod=mask_mod, backend="chunked")
    assert len(made) == 2, "another shape is another block mask"
    doc[32:] = 7  # two documents merged in place: the function now allows more, and must be classified again
    out, _ = qkv.attend(q, k, v, mask_mod=mask_mod, backend="chunked")
    assert len(made) == 3
    allowed = (doc[:, None] == doc[None, :]) & band(64, 64, True, None)
    ref, _ = plain_attention(q, k, v, allowed)
    torch.testing.assert_close(out.double(), ref, **FP32)
    qkv.attend(q, k, v, mask_mod=mods.document(doc), backend="chunked")
    assert len(made) == 4, "a new function is a new key (nothing is assumed about functions that look alike)"


def test_the_block_mask_cache_sees_state_through_combined_functions_and_modules():
    from qkv.attention.block_masks import cached_block_mask

    lengths = torch.tensor([3])
    combined = mods.and_masks(mods.causal(), mods.prefix_lm(lengths))
    first = cached_block_mask(combined, 1, 1, 8, 8, (4, 4))
    assert cached_block_mask(combined, 1, 1, 8, 8, (4, 4)) is first
    lengths.fill_(6)  # read through the combined function's closure
    assert cached_block_mask(combined, 1, 1, 8, 8, (4, 4)) is not first

    def same_document(ids, b, h, q_idx, kv_idx):
        return ids[q_idx] == ids[kv_idx]

    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    partial = functools.partial(same_document, ids)
    first = cached_block_mask(partial, 1, 1, 8, 8, (4, 4))
    assert cached_block_mask(partial, 1, 1, 8, 8, (4, 4)) is first
    ids.fill_(0)  # read through the partial's arguments
    assert cached_block_mask(partial, 1, 1, 8, 8, (4, 4)).classes.eq(FULL).all()


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_functions_are_named_in_clear_errors():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    with pytest.raises(ConfigError, match="must return a bool tensor"):
        qkv.attend(q, k, v, mask_mod=lambda b, h, qi, kv: (qi - kv).float(), backend="reference")
    with pytest.raises(ShapeError, match="does not broadcast"):
        qkv.attend(q, k, v, mask_mod=lambda b, h, qi, kv: torch.ones(3, 3, dtype=torch.bool), backend="reference")
    with pytest.raises(ConfigError, match="must return float scores"):
        qkv.attend(q, k, v, score_mod=lambda s, b, h, qi, kv: s > 0, backend="reference")
    with pytest.raises(ConfigError, match="mask_mod must be a function"):
        qkv.attend(q, k, v, mask_mod=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(BackendUnsupportedError, match="score_mod is not additive"):
        qkv.attend(q, k, v, score_mod=mods.soft_cap(5.0), backend="fused")
    with pytest.raises(ShapeError, match="doc_ids must be integer"):
        mods.document(torch.rand(8))


# ------------------------------------------------------------------------------------------------------ built-ins


def test_alibi_function_equals_the_dense_alibi_bias():
    q, k, v = (torch.randn(2, 4, 12, 8, dtype=torch.float64) for _ in range(3))
    dense = qkv.attention.positional.alibi_bias(4, 12, 12).double()
    want, _ = qkv.attend(q, k, v, bias=dense, causal=True, backend="reference")
    for backend in ("reference", "chunked", "fused"):
        got, _ = qkv.attend(q, k, v, score_mod=mods.alibi(4), causal=True, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.hf
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_equal_transformers(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :]
    ours = mods.T5RelativeBias(4, num_buckets=32, max_distance=128, bidirectional=bidirectional).bucket(relative)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional, 32, 128)
    assert torch.equal(ours, theirs)


def test_t5_table_gets_gradients_through_the_chunked_backward():
    t5 = mods.T5RelativeBias(2, num_buckets=8, max_distance=16, bidirectional=False).double()
    q, k, v = (torch.randn(1, 2, 40, 4, dtype=torch.float64) for _ in range(3))
    for backend in ("reference", "chunked", "fused"):
        t5.zero_grad()
        out, _ = qkv.attend(q, k, v, causal=True, score_mod=t5, backend=backend)
        (out**2).sum().backward()
        grads = t5.relative_attention_bias.weight.grad.clone()
        if backend == "reference":
            want = grads
        torch.testing.assert_close(grads, want, rtol=1e-10, atol=1e-12)
    assert want.abs().sum() > 0


# -------------------------------------------------------------------------- attention-gym's functions, by copy


def _gym_document(offsets):
    counts = offsets[1:] - offsets[:-1]
    document_id = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), counts)

    def causal_mask(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def doc_mask_mod(b, h, q_idx, kv_idx):
        same_doc = document_id[q_idx] == document_id[kv_idx]
        q_logical = q_idx - offsets[document_id[q_idx]]
        kv_logical = kv_idx - offsets[document_id[kv_idx]]
        inner_mask = causal_mask(b, h, q_logical, kv_logical)
        return same_doc & inner_mask

    return doc_mask_mod


def _gym_prefix_lm(prefix_length):
    def prefix_lm_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= prefix_length) | (q_idx >= kv_idx)

    return prefix_lm_causal


def _gym_sliding_window(window):
    def sliding_window_causal(b, h, q_idx, kv_idx):
        causal_mask = q_idx >= kv_idx
        window_mask = q_idx - kv_idx <= window
        return causal_mask & window_mask

    return sliding_window_causal


def _gym_alibi(H):
    def alibi_mod(score, b, h, q_idx, kv_idx):
        scale = torch.exp2(-((h + 1) * 8.0 / H))
        bias = (kv_idx - q_idx) * scale
        return score + bias

    return alibi_mod


def _gym_soft_cap(softcap):
    def soft_cap(score, b, h, q_idx, kv_idx):
        score = score / softcap
        score = torch.tanh(score)
        score = score * softcap
        return score

    return soft_cap


def _scalar_dense_mask(mask_mod, h, n):
    """FlexAttention calls functions on scalar indices: evaluate them that way, one pair at a time."""
    out = torch.zeros(1, h, n, n, dtype=torch.bool)
    for hi in range(h):
        for i in range(n):
            for j in range(n):
                out[0, hi, i, j] = bool(mask_mod(torch.tensor(0), torch.tensor(hi), torch.tensor(i), torch.tensor(j)))
    return out


def _scalar_dense_bias(score_mod, h, n):
    out = torch.zeros(1, h, n, n, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    for hi in range(h):
        for i in range(n):
            for j in range(n):
                out[0, hi, i, j] = score_mod(zero, torch.tensor(0), torch.tensor(hi), torch.tensor(i), torch.tensor(j))
    return out


N_GYM = 24


@pytest.mark.parametrize(
    ("mask_mod", "score_mod"),
    [
        (_gym_document(torch.tensor([0, 5, 13, 24])), None),
        (_gym_prefix_lm(7), None),
        (_gym_sliding_window(4), None),
        (_gym_sliding_window(4), _gym_alibi(2)),
        (None, _gym_alibi(2)),
    ],
    ids=["document", "prefix-lm", "sliding-window", "window+alibi", "alibi"],
)
@pytest.mark.parametrize("backend", ["reference", "chunked", "fused"])
def test_attention_gym_functions_give_what_dense_sdpa_gives(mask_mod, score_mod, backend):
    h, n = 2, N_GYM
    q, k, v = (torch.randn(1, h, n, 8, dtype=torch.float64) for _ in range(3))
    dense_mask = _scalar_dense_mask(mask_mod, h, n) if mask_mod is not None else None
    attn_mask = torch.zeros(1, h, n, n, dtype=torch.float64)
    if score_mod is not None:
        attn_mask = attn_mask + _scalar_dense_bias(score_mod, h, n)
    if dense_mask is not None:
        attn_mask = attn_mask.masked_fill(~dense_mask, float("-inf"))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    blocks = block_mask(mask_mod, 1, h, n, n, 8) if mask_mod is not None else None
    if backend == "fused" and score_mod is not None:  # a user's function: SDPA cannot know it only adds a term
        with pytest.raises(BackendUnsupportedError, match="not additive"):
            qkv.attend(q, k, v, block_mask=blocks, score_mod=score_mod, backend=backend)
        backend = "auto"
    got, _ = qkv.attend(q, k, v, block_mask=blocks, score_mod=score_mod, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_attention_gym_soft_cap_gives_what_the_dense_computation_gives():
    q, k, v = (torch.randn(1, 2, N_GYM, 8, dtype=torch.float64) * 3 for _ in range(3))
    scores = _gym_soft_cap(4.0)(q @ k.transpose(-2, -1) / math.sqrt(8), None, None, None, None)
    want = torch.softmax(scores, -1) @ v
    for backend in ("reference", "chunked"):
        got, _ = qkv.attend(q, k, v, score_mod=_gym_soft_cap(4.0), backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------- flex


def _flex_runs() -> bool:
    """FlexAttention compiles for this machine's CPU (torch 2.6 and later)."""
    from qkv.attention.backends.flex import _flex

    return _flex() is not None and torch.__version__ >= (2, 6)


@pytest.mark.skipif(_flex_runs(), reason="this torch compiles FlexAttention for the CPU")
def test_flex_backend_is_refused_by_name_where_it_cannot_compile_for_the_cpu():
    q = torch.randn(1, 2, 16, 16)
    with pytest.raises(BackendUnsupportedError, match="use 'chunked'|has no torch.nn.attention.flex_attention"):
        qkv.attend(q, q, q, mask_mod=mods.causal(), backend="flex")


@pytest.mark.skipif(not _flex_runs(), reason="this torch has no FlexAttention")
@pytest.mark.parametrize(
    ("mask_mod", "score_mod", "lq"),
    [(_gym_document(torch.tensor([0, 40, 100, 128])), None, 128), (mods.causal(), mods.alibi(4), 32)],
    ids=["document", "causal+alibi, queries after cached keys"],
)
def test_flex_backend_equals_chunked(mask_mod, score_mod, lq):
    q = torch.randn(1, 4, lq, 16)
    k, v = torch.randn(1, 2, 128, 16), torch.randn(1, 2, 128, 16)
    with torch.no_grad():
        want, _ = qkv.attend(q, k, v, mask_mod=mask_mod, score_mod=score_mod, backend="chunked")
        got, _ = qkv.attend(q, k, v, mask_mod=mask_mod, score_mod=score_mod, backend="flex")
    torch.testing.assert_close(got, want, **FP32)


@pytest.mark.skipif(not _flex_runs(), reason="this torch has no FlexAttention")
def test_flex_backend_refuses_gradients_on_a_cpu_by_name():
    q = torch.randn(1, 2, 16, 16, requires_grad=True)
    with pytest.raises(BackendUnsupportedError, match="no backward pass on a CPU.*'chunked' has one"):
        qkv.attend(q, q, q, mask_mod=mods.causal(), backend="flex")


def test_and_or_masks_combine_like_the_definitions():
    allowed = block_mask(mods.and_masks(mods.causal(), mods.sliding_window((2, 2))), 1, 1, 9, 9, 4).dense()
    assert torch.equal(allowed[0, 0], band(9, 9, True, (2, 2)))
    allowed = block_mask(mods.or_masks(mods.causal(), mods.prefix_lm(3)), 1, 1, 9, 9, 4).dense()
    assert torch.equal(allowed[0, 0], band(9, 9, True, None) | (torch.arange(9) < 3)[None, :])
    with pytest.raises(ConfigError, match="and_masks needs at least one"):
        mods.and_masks()


# ------------------------------------------------------------------------------------- one mask route, one window


@pytest.mark.parametrize("backend", [*BACKENDS, "flex"])
@pytest.mark.parametrize(
    ("causal", "window"), [(True, None), (False, 1), (False, 5), (True, 5), (False, (3, 2)), (True, (4, 3))]
)
def test_causal_and_window_are_exactly_the_mask_functions(backend, causal, window):
    """``causal=True`` is ``mods.causal()`` and ``window=w`` is ``mods.sliding_window(w)``, forward and backward, on
    every backend; an int window is the number of keys a query sees (itself included), as Mistral counts."""
    if backend == "flex" and "flex" not in qkv.attention.available_backends():
        pytest.skip("flex attention is not available here")
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for n in (12, 16, 16))
    functions = [mods.causal()] if causal else []
    functions += [mods.sliding_window(window)] if window is not None else []
    by_function = mods.and_masks(*functions)
    grads = []
    for options in ({"causal": causal, "window": window}, {"mask_mod": by_function}):
        leaves = [t.clone().requires_grad_(backend != "flex") for t in (q, k, v)]
        out, weights = qkv.attend(*leaves, backend=backend, return_weights=backend != "flex", **options)
        if backend != "flex":
            out.pow(2).sum().backward()
            grads.append([out, weights, *(t.grad for t in leaves)])
        else:
            grads.append([out])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, **FP32)
    if isinstance(window, int):  # the count: every query with enough history sees exactly `window` keys
        seen = qkv.attention.attention_weights(q, k, causal=causal, window=window).gt(0).sum(-1)
        assert (seen[..., window:] == window).all() and seen.max() == window


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "kv_heads", "causal"), [(1, 4, False), (2, 4, False), (37, 2, False), (37, 4, True)])
def test_strict_causal_is_keys_strictly_before_the_query(backend, n, kv_heads, causal):
    """``mods.causal(strict=True)`` (PixelSNAIL's raster order; the fused backend runs it on SDPA's causal kernel,
    shifted one position) equals a function of your own with the same values, forward and backward, grouped heads
    too: query i sees keys 0..i-1, the first query nothing (zeros)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, n, 8, generator=g)
    k, v = torch.randn(2, kv_heads, n, 8, generator=g), torch.randn(2, kv_heads, n, 6, generator=g)
    results = []
    for mask_mod in (mods.causal(strict=True), lambda b, h, q_idx, kv_idx: kv_idx < q_idx):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, weights = qkv.attend(*leaves, mask_mod=mask_mod, causal=causal, backend=backend, return_weights=True)
        out.pow(2).sum().backward()
        results.append([out, weights, *(t.grad for t in leaves)])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, **FP32)
    out, weights = results[0][:2]
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    assert torch.equal(weights.gt(0), torch.ones(n, n, dtype=torch.bool).tril(-1).expand_as(weights))


def test_strict_causal_runs_fused_where_a_dense_mask_would_be_too_large():
    """The shifted kernel needs no dense mask, so ``auto`` keeps SDPA for long sequences (a function of your own
    with the same values is materialised, and past the limit goes to the chunked backend)."""
    from qkv.attention.backends import choose_backend
    from qkv.attention.call import build_call

    q = torch.zeros(1, 2, 4096, 8)
    options = dict(causal=False, window=None, bias=None, score="scaled_dot", scale=None, dropout=0.0)
    strict = build_call(q, q, q, None, return_weights=False, mask_mod=mods.causal(strict=True), **options)
    own = build_call(q, q, q, None, return_weights=False, mask_mod=lambda b, h, qi, kv: kv < qi, **options)
    assert (choose_backend(strict), choose_backend(own)) == ("fused", "chunked")


def test_strict_causal_reaches_sdpa_as_its_causal_kernel_without_a_mask(monkeypatch):
    """What the fused backend hands SDPA: queries 1..n-1 and keys 0..n-2, ``is_causal``, no mask."""
    from qkv.attention.backends import fused

    seen = []
    real = fused._sdpa

    def spy(q, k, v, attn_mask, dropout, is_causal, scale, kwargs):
        seen.append((q.shape[2], k.shape[2], attn_mask, is_causal))
        return real(q, k, v, attn_mask, dropout, is_causal, scale, kwargs)

    monkeypatch.setattr(fused, "_sdpa", spy)
    q = torch.randn(1, 2, 9, 4)
    qkv.attend(q, q, q, mask_mod=mods.causal(strict=True), backend="fused")
    assert seen == [(8, 8, None, True)]


def test_window_mask_tensor_and_sliding_window_agree_with_the_definition():
    """Keys t - w + 1 .. t for an int w; t - left .. t + right for a tuple (queries are the last q_len keys)."""
    for window in (1, 3, (2, 0), (1, 4)):
        dense = qkv.attention.window_mask_tensor(5, window, 9)
        left, right = (window - 1, 0) if isinstance(window, int) else window
        t, j = torch.arange(4, 9)[:, None], torch.arange(9)[None, :]
        assert torch.equal(dense, (j >= t - left) & (j <= t + right))
        grid = mods.index_grid(1, 1, 5, 9)
        assert torch.equal(mods.sliding_window(window)(grid.b, grid.h, grid.q, grid.kv)[0, 0], dense)


def test_block_mask_is_its_own_argument():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    blocks = block_mask(mods.causal(), 1, 2, 16, 16, 8)
    by_blocks, _ = qkv.attend(q, k, v, block_mask=blocks)
    torch.testing.assert_close(by_blocks, qkv.attend(q, k, v, causal=True)[0], **FP32)
    with pytest.raises(ConfigError, match="a BlockMask goes in block_mask="):
        qkv.attend(q, k, v, mask_mod=blocks)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pass block_mask= or mask_mod=, not both"):
        qkv.attend(q, k, v, mask_mod=mods.causal(), block_mask=blocks)
    with pytest.raises(ConfigError, match="block_mask must be a BlockMask"):
        qkv.attend(q, k, v, block_mask=mods.causal())  # type: ignore[arg-type]


def test_attention_weights_and_scores_share_one_signature():
    import inspect

    weights = inspect.signature(qkv.attention.attention_weights).parameters
    scores = inspect.signature(qkv.attention.attention_scores).parameters
    assert [(p.name, p.kind, p.default) for p in weights.values()] == [
        (p.name, p.kind, p.default) for p in scores.values()
    ]
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    options = {"causal": True, "window": 3, "heads": [1]}
    w = qkv.attention.attention_weights(q, k, **options)
    torch.testing.assert_close(w, torch.softmax(qkv.attention.attention_scores(q, k, **options), -1), **FP32)


@pytest.mark.parametrize("relative", [True, False])
def test_an_additive_score_mod_of_your_own_runs_on_every_backend(relative):
    """Wrapped in mods.AdditiveScoreMod, a user's term is known to only add: the fused backend turns it into a
    dense bias, the chunked one shares relative terms; all equal the float64 oracle with the term as a bias."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))

    def decay(b, h, q_idx, kv_idx):
        return -0.3 * (h + 1) * (q_idx - kv_idx).abs().float()

    score_mod = mods.AdditiveScoreMod(decay, relative=relative)
    assert mods.is_additive(score_mod) and mods.is_relative(score_mod) == relative
    grid = mods.index_grid(1, 2, 12, 12)
    bias = decay(grid.b, grid.h, grid.q, grid.kv).double()
    allowed = band(12, 12, True, None)
    ref, _ = plain_attention(q.double(), k.double(), v.double(), allowed, bias=bias)
    for backend in ("reference", "chunked", "fused"):
        out, _ = qkv.attend(q, k, v, causal=True, score_mod=score_mod, backend=backend)
        torch.testing.assert_close(out.double(), ref, **FP32)
