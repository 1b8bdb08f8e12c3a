"""The PNG/SVG grids: every variant draws, long inputs are downsampled exactly, Korean gets a CJK font."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from qkv.errors import ConfigError
from qkv.visualization.grid import _font_family, downsample, plot_attention
from tests.conftest import FP32_TIGHT


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
    torch.testing.assert_close(grid[1, 4, 7], w[1, 12:15, 21:24].mean(), **FP32_TIGHT)


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


def test_import_and_drawing_leave_matplotlib_to_the_user(tmp_path):
    """``import qkv`` neither imports matplotlib nor chooses its backend; drawing uses a bare Figure, so the user's
    backend (MPLBACKEND, a notebook's inline backend) and pyplot's open figures are untouched."""
    code = f"""
import sys, torch
import qkv
assert "matplotlib" not in sys.modules, "import qkv imported matplotlib"
import matplotlib
matplotlib.use("svg")  # the user's choice, made after import qkv
import matplotlib.pyplot as plt
w = [torch.softmax(torch.randn(2, 5, 5), -1)]
qkv.visualization.plot_attention(w, list("abcde"), {str(tmp_path / "g.png")!r})
assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
"""
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["x.jpg2", "x", "x.html"])
def test_unknown_image_formats_are_refused_before_drawing(tmp_path, name):
    with pytest.raises(ConfigError, match=r"must end in \.png, \.svg, \.pdf"):
        plot_attention([torch.softmax(torch.randn(1, 3, 3), -1)], list("abc"), tmp_path / name)
    assert not (tmp_path / name).exists()
