"""qkv: the attention mechanism, complete, exact and fast, on PyTorch."""

from qkv import errors
from qkv.attention import KVCache, MultiHeadAttention, attend, register_score
from qkv.decoding import generate
from qkv.models.output import ModelOutput

__version__ = "0.1.0"
__all__ = [
    "KVCache",
    "ModelOutput",
    "MultiHeadAttention",
    "attend",
    "errors",
    "generate",
    "register_score",
    "__version__",
]
