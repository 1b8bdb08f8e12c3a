"""Seeing attention: the attention-pattern grid as a PNG."""

from qkv.visualization.grid import plot_attention_overview

__all__ = ["plot_attention_overview"]
