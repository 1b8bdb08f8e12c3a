"""Tokenizers: characters or byte-level BPE, saved as one JSON file next to a checkpoint."""

from qkv.tokenizers.base import Tokenizer, load_tokenizer_file
from qkv.tokenizers.bpe import BPETokenizer
from qkv.tokenizers.char import CharTokenizer
from qkv.tokenizers.pair import PairTokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "PairTokenizer", "Tokenizer", "load_tokenizer_file", "train_tokenizer"]


def train_tokenizer(kind: str, text: str, vocab_size: int = 512) -> Tokenizer:
    """Build a tokenizer of ``kind`` (``"char"`` or ``"bpe"``) from ``text``."""
    from qkv.errors import ConfigError

    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size=vocab_size)
    raise ConfigError(f"unknown tokenizer kind {kind!r}; choose 'char' or 'bpe'")
