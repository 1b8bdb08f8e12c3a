"""qkv: the attention mechanism, complete, exact and fast, on PyTorch."""

from qkv import errors
from qkv.attention import KVCache, MultiHeadAttention, attend, register_score

__version__ = "0.1.0"
__all__ = ["KVCache", "MultiHeadAttention", "attend", "errors", "register_score", "__version__"]
