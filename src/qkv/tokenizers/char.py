"""A character-level tokenizer: one id per character seen in training, plus ``<unk>`` (id 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qkv.errors import CheckpointError

__all__ = ["CharTokenizer"]

UNK = "<unk>"
UNK_TEXT = "\ufffd"  # what an unknown id decodes to: the Unicode replacement character


class CharTokenizer:
    """Characters to ids. Unknown characters encode to ``<unk>`` (id 0) and decode to ``\\ufffd``."""

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise CheckpointError("a character tokenizer needs distinct single characters")
        self.chars = list(chars)
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}
        self._table: np.ndarray | None = None  # code point -> id, built on first use by encode_array
        self._ascii: bytes | None = None

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def unk_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, 0) for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        """``encode(text)`` as a 1-D array, at memory speed (a table lookup per character instead of a dict lookup):
        what preparing a large corpus uses."""
        if self._table is None:
            self._table = np.zeros(0x110000, dtype=np.uint32)  # every code point; unknown ones are <unk> (0)
            self._table[[ord(c) for c in self.chars]] = np.arange(1, len(self.chars) + 1, dtype=np.uint32)
            ascii_ids = self._table[:128]
            # ASCII text maps through bytes.translate, several times faster still, when the ids fit in a byte
            self._ascii = bytes(ascii_ids.tolist()) + bytes(128) if int(ascii_ids.max()) < 256 else None
        if self._ascii is not None and text.isascii():
            return np.frombuffer(text.encode("ascii").translate(self._ascii), dtype=np.uint8)
        return self._table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` this tokenizer has no id for."""
        return sorted({c for c in text if c not in self._ids})

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else UNK_TEXT for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"qkv_tokenizer": "char", "unk": UNK, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> CharTokenizer:
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise CheckpointError(f"character tokenizer {source or ''} has no 'chars' list")
        return cls(chars)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
