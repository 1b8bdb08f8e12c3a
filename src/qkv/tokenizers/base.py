"""The small protocol every qkv tokenizer follows, and loading one from its file."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from qkv.errors import CheckpointError
from qkv.jsonfile import read_json

__all__ = ["Tokenizer", "load_tokenizer_file"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. ``encode`` never fails on unknown characters (they map to ``<unk>`` or bytes)."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, path: str | Path) -> None: ...


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved by :meth:`Tokenizer.save` (or a HuggingFace ``tokenizer.json``)."""
    from qkv.tokenizers.bpe import BPETokenizer
    from qkv.tokenizers.char import CharTokenizer
    from qkv.tokenizers.pair import PairTokenizer

    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and data.get("qkv_tokenizer") == "char":
        return CharTokenizer.from_dict(data, source=path)
    if isinstance(data, dict) and data.get("qkv_tokenizer") == "image":  # an image run's format
        from qkv.tokenizers.image import ImageFormat

        return ImageFormat.from_dict(data, source=path)  # type: ignore[return-value]  # (an image run's vocabulary)
    if isinstance(data, dict) and data.get("qkv_tokenizer") == "pair":
        return PairTokenizer.from_dict(data, source=path)
    if isinstance(data, dict) and "model" in data:
        return BPETokenizer.load(path)
    raise CheckpointError(f"{path} is neither a qkv character tokenizer nor a HuggingFace tokenizer.json")
