"""Seeing attention: exact capture from any qkv model, the attention-pattern grid as a PNG, and the interactive
explorer (an offline page, or inline in a notebook)."""

from qkv.visualization.capture import AttentionCapture, capture_attention
from qkv.visualization.grid import plot_alignment, plot_attention
from qkv.visualization.widget import Explorer

__all__ = ["AttentionCapture", "Explorer", "capture_attention", "plot_alignment", "plot_attention"]
