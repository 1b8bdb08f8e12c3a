"""The attention core: scores, masks, softmax, backends, multi-head attention, positions and the KV cache.

This package imports nothing from the rest of qkv except :mod:`qkv.errors`.
"""

from qkv.attention import mods
from qkv.attention.attend import attend
from qkv.attention.backends import available_backends, choose_backend
from qkv.attention.block_masks import BlockMask, block_mask
from qkv.attention.frozen import frozen_weights
from qkv.attention.kv_cache import KVCache
from qkv.attention.masks import causal_mask, combine, local_mask, padding_mask
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
from qkv.attention.weights import attention_weights

__all__ = [
    "BlockMask",
    "KVCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "ScoreFunction",
    "SinusoidalPositions",
    "alibi_bias",
    "alibi_slopes",
    "sinusoidal_table",
    "attend",
    "attention_weights",
    "available_backends",
    "available_scores",
    "block_mask",
    "causal_mask",
    "choose_backend",
    "combine",
    "frozen_weights",
    "local_mask",
    "make_score",
    "mods",
    "padding_mask",
    "register_score",
    "safe_softmax",
]
