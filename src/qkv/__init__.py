"""qkv: the attention mechanism, complete, exact and fast, on PyTorch."""

from qkv import errors
from qkv.attention import KVCache, MultiHeadAttention, attend, register_score
from qkv.decoding import generate, generate_stream, translate
from qkv.models.output import ModelOutput
from qkv.pretrained import embed, load_pretrained, load_tokenizer, save_pretrained
from qkv.visualization import capture_attention

__version__ = "0.1.0"
__all__ = [
    "KVCache",
    "ModelOutput",
    "MultiHeadAttention",
    "attend",
    "capture_attention",
    "embed",
    "errors",
    "generate",
    "generate_stream",
    "load_pretrained",
    "load_tokenizer",
    "register_score",
    "save_pretrained",
    "translate",
    "__version__",
]
