"""Seeing attention: exact capture from any qkv model and the attention-pattern grid as a PNG."""

from qkv.visualization.capture import AttentionCapture, capture_attention
from qkv.visualization.grid import plot_alignment, plot_attention

__all__ = ["AttentionCapture", "capture_attention", "plot_alignment", "plot_attention"]
