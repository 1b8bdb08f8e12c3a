"""Positions against hand computations of their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.attention import LearnedPositions, RotaryEmbedding, SinusoidalPositions, alibi_bias, alibi_slopes
from qkv.errors import ConfigError
from tests.conftest import FP32


def test_sinusoidal_matches_formula():
    pe = SinusoidalPositions(max_seq_len=10, dim=6)(torch.arange(10))
    for p in (0, 3, 9):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_learned_positions_refuse_positions_past_max_len():
    emb = LearnedPositions(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ConfigError, match="max_seq_len=8"):
        emb(torch.arange(9))


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_is_a_rotation_of_each_pair_by_position_times_frequency(interleaved):
    d, base = 8, 10000.0
    rope = RotaryEmbedding(d, base=base, interleaved=interleaved)
    x = torch.randn(1, 1, 5, d, dtype=torch.float64)
    out = rope(x.float(), torch.arange(5)).double()
    for p in range(5):
        for i in range(d // 2):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
            theta = p * base ** (-2 * i / d)
            z = complex(x[0, 0, p, a], x[0, 0, p, b]) * complex(math.cos(theta), math.sin(theta))
            assert out[0, 0, p, a].item() == pytest.approx(z.real, abs=1e-5)
            assert out[0, 0, p, b].item() == pytest.approx(z.imag, abs=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    s1 = rope(q, torch.tensor([7])) @ rope(k, torch.tensor([3])).transpose(-2, -1)
    s2 = rope(q, torch.tensor([104])) @ rope(k, torch.tensor([100])).transpose(-2, -1)
    torch.testing.assert_close(s1, s2, **FP32)


def test_alibi_slopes_match_the_paper():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3
    assert alibi_slopes(6).tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


def test_alibi_bias_is_minus_slope_times_distance_end_aligned():
    bias = alibi_bias(2, q_len=2, k_len=4)
    slopes = alibi_slopes(2)
    for h in range(2):
        for i in range(2):
            for j in range(4):
                t = i + 2  # queries are the last two positions
                assert bias[0, h, i, j].item() == pytest.approx(-slopes[h].item() * abs(t - j))
