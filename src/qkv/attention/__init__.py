"""The attention core: scores, masks, softmax, backends, multi-head attention, positions and the KV cache.

This package imports nothing from the rest of qkv except :mod:`qkv.errors`.
"""

from qkv.attention import mods
from qkv.attention.attend import attend
from qkv.attention.backends import available_backends, choose_backend
from qkv.attention.block_masks import BlockMask, block_mask
from qkv.attention.frozen import frozen_weights
from qkv.attention.kv_cache import KVCache
from qkv.attention.masks import (
    Window,
    causal_mask_tensor,
    combine_mask_tensors,
    padding_mask_tensor,
    window_mask_tensor,
)
from qkv.attention.multi_head import MultiHeadAttention
from qkv.attention.positional import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    alibi_bias,
    alibi_slopes,
    sinusoidal_table,
)
from qkv.attention.scores import ScoreFunction, available_scores, make_score, register_score
from qkv.attention.softmax import safe_softmax
from qkv.attention.weights import attention_scores, attention_weights

__all__ = [
    "BlockMask",
    "KVCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "ScoreFunction",
    "SinusoidalPositions",
    "Window",
    "alibi_bias",
    "alibi_slopes",
    "sinusoidal_table",
    "attend",
    "attention_scores",
    "attention_weights",
    "available_backends",
    "available_scores",
    "block_mask",
    "causal_mask_tensor",
    "choose_backend",
    "combine_mask_tensors",
    "frozen_weights",
    "make_score",
    "mods",
    "padding_mask_tensor",
    "register_score",
    "safe_softmax",
    "window_mask_tensor",
]
