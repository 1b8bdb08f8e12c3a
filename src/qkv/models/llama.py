"""The Llama family (Llama, Mistral, Qwen2): a :class:`~qkv.models.gpt.GPT` with Llama's settings.

RMSNorm, SwiGLU, rotary positions (``rope_theta``, scaling), grouped-query attention, untied embeddings by default;
Qwen2 adds q/k/v biases and Mistral a sliding window. The model class is :class:`GPT` itself: one forward, one KV
cache, one decoding path for every decoder-only family.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.models.blocks import FeedForwardKind, Norm
from qkv.models.gpt import GPTConfig, Positions

__all__ = ["LlamaConfig"]


@dataclass
class LlamaConfig(GPTConfig):
    """A :class:`GPTConfig` with Llama's defaults: rotary positions, RMSNorm, SwiGLU, no biases, untied embeddings."""

    positions: Positions = "rotary"
    linear_bias: bool = False
    norm: Norm = "rms"
    feed_forward: FeedForwardKind = "swiglu"
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
