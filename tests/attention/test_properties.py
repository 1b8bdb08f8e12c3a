"""Property-based: random shapes, masks (incl. fully masked rows), windows, scores and backends vs the oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qkv
from tests.conftest import FP32, band, plain_attention


@st.composite
def attention_case(draw):
    b = draw(st.integers(1, 2))
    kvh = draw(st.integers(1, 2))
    h = kvh * draw(st.integers(1, 3))
    lk = draw(st.integers(1, 40))
    lq = draw(st.integers(1, lk))
    d = draw(st.sampled_from([1, 4, 8]))
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 12), st.tuples(st.integers(0, 12), st.integers(0, 12))))
    mask_p = draw(st.sampled_from([None, 0.0, 0.5, 0.9]))
    with_bias = draw(st.booleans())
    # cosine's gradient scales with 1/|q|: with d = 1 every score is ±1 and fp32 cancellation dominates, so it is
    # only drawn for d >= 4
    score = draw(st.sampled_from(["scaled_dot", "dot", "cosine"] if d >= 4 else ["scaled_dot", "dot"]))
    backend = draw(st.sampled_from(["reference", "chunked", "fused", "auto"]))
    seed = draw(st.integers(0, 2**16))
    return b, h, kvh, lq, lk, d, causal, window, mask_p, with_bias, score, backend, seed


@given(attention_case())
def test_random_calls_agree_with_the_oracle(case):
    b, h, kvh, lq, lk, d, causal, window, mask_p, with_bias, score, backend, seed = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, requires_grad=True)
    k = torch.randn(b, kvh, lk, d, generator=g, requires_grad=True)
    v = torch.randn(b, kvh, lk, d, generator=g, requires_grad=True)
    mask = None if mask_p is None else torch.rand(b, 1, lq, lk, generator=g) >= mask_p
    bias = torch.randn(1, h, lq, lk, generator=g) if with_bias else None
    out, _ = qkv.attend(q, k, v, mask, causal=causal, window=window, bias=bias, score=score, backend=backend)
    allowed = band(lq, lk, causal, window) if mask is None else band(lq, lk, causal, window) & mask
    qq, kk = q, k
    if score == "cosine":
        qq, kk = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    scale = {"scaled_dot": d**-0.5, "dot": 1.0, "cosine": 1.0}[score]
    ref, _ = plain_attention(qq, kk, v, allowed, bias, scale=scale)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, **FP32)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, [q, k, v], upstream.float())
    want = torch.autograd.grad(ref, [q, k, v], upstream)
    for a, w in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), w.double(), **FP32)


@pytest.mark.slow
@given(attention_case())
def test_random_calls_agree_with_the_oracle_slow(case):
    """Same property; the `slow` job runs it with the `slow` hypothesis profile (1,000 examples)."""
    test_random_calls_agree_with_the_oracle.hypothesis.inner_test(case)


@st.composite
def low_precision_case(draw):
    case = list(draw(attention_case()))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return (*case, dtype)


def _low_precision_check(case) -> None:
    """Any dtype: finite, and equal to the float64 oracle on the same (rounded) inputs within the dtype's precision."""
    b, h, kvh, lq, lk, d, causal, window, mask_p, with_bias, score, backend, seed, dtype = case
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n_heads, n, d, generator=g).to(dtype) for n_heads, n in ((h, lq), (kvh, lk), (kvh, lk)))
    mask = None if mask_p is None else torch.rand(b, 1, lq, lk, generator=g) >= mask_p
    bias = torch.randn(1, h, lq, lk, generator=g) if with_bias else None
    out, _ = qkv.attend(q, k, v, mask, causal=causal, window=window, bias=bias, score=score, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    allowed = band(lq, lk, causal, window) if mask is None else band(lq, lk, causal, window) & mask
    qq, kk = q.double(), k.double()
    if score == "cosine":
        qq, kk = torch.nn.functional.normalize(qq, dim=-1), torch.nn.functional.normalize(kk, dim=-1)
    scale = {"scaled_dot": d**-0.5, "dot": 1.0, "cosine": 1.0}[score]
    ref, _ = plain_attention(qq, kk, v.double(), allowed, bias, scale=scale)
    # the output is rounded to the dtype: bf16 keeps 8 bits (2^-8 relative), fp16 11; values are O(1)-O(3)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@given(low_precision_case())
def test_any_dtype_is_finite_and_matches_the_oracle(case):
    _low_precision_check(case)


@pytest.mark.slow
@given(low_precision_case())
def test_any_dtype_is_finite_and_matches_the_oracle_slow(case):
    _low_precision_check(case)
