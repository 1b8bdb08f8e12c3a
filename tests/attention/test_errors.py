"""Bad input raises a qkv error whose message names what was given and what was expected."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.attention import make_score, register_score
from qkv.errors import (
    BackendUnsupportedError,
    ConfigError,
    DTypeError,
    MaskError,
    QkvError,
    ShapeError,
    UnknownNameError,
)

q = torch.randn(2, 4, 5, 8)
k = torch.randn(2, 2, 6, 8)
v = torch.randn(2, 2, 6, 8)

CASES = [
    ("3-D q", dict(q=q[0]), ShapeError, "must be 4-D (batch, heads, seq, dim)"),
    ("batch mismatch", dict(k=k[:1], v=v[:1]), ShapeError, "batch size"),
    ("k/v length mismatch", dict(v=v[:, :, :4]), ShapeError, "k and v must agree"),
    ("heads not a multiple", dict(k=torch.randn(2, 3, 6, 8), v=torch.randn(2, 3, 6, 8)), ShapeError, "multiple"),
    ("q/k dims differ", dict(k=torch.randn(2, 2, 6, 4)), ShapeError, "q_dim=8 and k_dim=4"),
    ("integer q", dict(q=q.long()), DTypeError, "floating-point"),
    ("mixed dtypes", dict(v=v.double()), DTypeError, "share one dtype"),
    ("float mask", dict(mask=torch.zeros(5, 6)), MaskError, "pass it as bias="),
    ("int mask", dict(mask=torch.ones(5, 6, dtype=torch.int64)), MaskError, "must be bool"),
    ("mask shape", dict(mask=torch.ones(5, 7, dtype=torch.bool)), MaskError, "(5, 7) does not broadcast"),
    ("5-D mask", dict(mask=torch.ones(1, 1, 1, 5, 6, dtype=torch.bool)), MaskError, "does not broadcast"),
    ("bool bias", dict(bias=torch.ones(5, 6, dtype=torch.bool)), MaskError, "bias must be a float tensor"),
    ("bias shape", dict(bias=torch.zeros(3, 6)), MaskError, "does not broadcast"),
    ("negative window", dict(window=(-1, 0)), ConfigError, "window sizes must be >= 0"),
    ("empty window", dict(window=0), ConfigError, "window must be >= 1 (the number of keys a query sees"),
    ("bad window tuple", dict(window=(1, 2, 3)), ConfigError, "(left, right)"),
    ("float window", dict(window=2.5), ConfigError, "window must be"),
    ("unknown score", dict(score="dotty"), UnknownNameError, "known scores"),
    ("parametric score by name", dict(score="general"), ConfigError, "make_score"),
    ("unknown backend", dict(backend="flash"), UnknownNameError, "choose one of"),
    (
        "fused with additive",
        dict(score=make_score("additive", q_dim=8), backend="fused"),
        BackendUnsupportedError,
        "not a dot product",
    ),
    ("dropout 1", dict(dropout=1.0), ConfigError, "[0, 1)"),
    ("nan scale", dict(scale=float("nan")), ConfigError, "finite"),
    ("causal not bool", dict(causal="yes"), ConfigError, "True or False"),
]


@pytest.mark.parametrize(("what", "override", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_attend_rejects_bad_input(what, override, error, fragment):
    args = dict(q=q, k=k, v=v)
    args.update(override)
    with pytest.raises(error) as info:
        qkv.attend(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    assert fragment in str(info.value)
    assert isinstance(info.value, QkvError)


def test_location_score_beyond_max_len():
    score = make_score("location", q_dim=8, max_len=4)
    with pytest.raises(ShapeError, match="max_len=4"):
        qkv.attend(q, k, v, score=score, backend="reference")


def test_register_score_refuses_silent_overwrite():
    with pytest.raises(ConfigError, match="already registered"):
        register_score("dot", lambda: None)


def test_multi_head_attention_config_errors():
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        qkv.MultiHeadAttention(30, 4)
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        qkv.MultiHeadAttention(32, 4, num_kv_heads=3)
    mha = qkv.MultiHeadAttention(32, 4)
    with pytest.raises(ShapeError, match="forget the batch dim"):
        mha(torch.randn(5, 32))
    with pytest.raises(MaskError, match="key_mask must be bool"):
        mha(torch.randn(2, 5, 32), key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask"):  # PyTorch's opposite of key_mask: no silent inversion
        mha(torch.randn(2, 5, 32), key_padding_mask=torch.ones(2, 5, dtype=torch.bool))


def test_kv_cache_overflow_and_shape_errors():
    cache = qkv.KVCache(1, 2, 2, 4, 8)
    with pytest.raises(ConfigError, match="KVCache is full"):
        cache.update(0, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8))
    with pytest.raises(ShapeError, match="KVCache holds"):
        cache.update(0, torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    with pytest.raises(ShapeError, match="KVCache holds"):  # values of another width than the cache's
        cache.update(0, torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 4))
    with pytest.raises(ShapeError, match="KVCache holds"):
        cache.update(0, torch.randn(2, 2, 1, 8), torch.randn(2, 2, 8))
