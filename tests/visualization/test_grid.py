"""The PNG/SVG grids: every variant draws, long inputs are downsampled exactly, Korean gets a CJK font."""

from __future__ import annotations

import pytest
import torch

from qkv.errors import ConfigError
from qkv.visualization.grid import _font_family, downsample, plot_attention


def attn(layers=2, heads=3, n=10):
    return [torch.softmax(torch.randn(heads, n, n), -1) for _ in range(layers)]


@pytest.mark.parametrize(
    "kwargs", [{}, {"average": True}, {"layer": 1}, {"layer": 1, "average": True}, {"layer": 0, "head": 2}]
)
def test_every_variant_draws(tmp_path, kwargs):
    path = plot_attention(attn(), list("한국어 tokens"), tmp_path / "g.png", **kwargs)
    assert path.stat().st_size > 5_000


def test_bad_layer_or_head(tmp_path):
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        plot_attention(attn(), list("abcdefghij"), tmp_path / "g.png", layer=5)
    with pytest.raises(ConfigError, match="--head needs --layer"):
        plot_attention(attn(), list("abcdefghij"), tmp_path / "g.png", head=1)


def test_downsampling_is_a_block_average():
    w = torch.rand(2, 300, 300)
    grid, block = downsample(w, cells=128)
    assert block == 3 and grid.shape == (2, 100, 100)
    torch.testing.assert_close(grid[1, 4, 7], w[1, 12:15, 21:24].mean(), atol=1e-6, rtol=0)


def test_a_cjk_font_is_used_when_installed():
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    if not any("CJK" in n for n in names):
        pytest.skip("no CJK font installed (scripts/setup.sh installs fonts-noto-cjk on Debian)")
    assert "CJK" in _font_family()[0]


def test_plot_alignment_draws_target_rows_over_source_columns(tmp_path):
    from qkv.errors import ShapeError
    from qkv.visualization import plot_alignment

    weights = torch.softmax(torch.randn(4, 6), dim=-1)
    path = plot_alignment(weights, list("2021년</s>"[:5]) + ["</s>"], list("2021"), tmp_path / "a.png")
    assert path.stat().st_size > 5000
    with pytest.raises(ShapeError, match=r"\(target_len, source_len\) = \(3, 6\)"):
        plot_alignment(weights, list("abcdef"), list("xyz"), tmp_path / "b.png")
