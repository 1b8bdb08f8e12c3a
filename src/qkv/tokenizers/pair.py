"""Source and target vocabularies for sequence-to-sequence models, with the special ids a decoder needs.

Ids 0-3 are ``<pad>``, ``<s>`` (begin, the decoder's first input), ``</s>`` (end) and ``<unk>`` on both sides; each
side splits text into characters (``"char"``) or whitespace-separated words (``"word"``). With ``shared=True`` both
sides use one vocabulary (needed when a Transformer shares its source and target embeddings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.errors import CheckpointError, ConfigError
from qkv.special_tokens import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID

__all__ = ["BOS_ID", "EOS_ID", "LEVELS", "PAD_ID", "UNK_ID", "PairTokenizer", "Vocabulary"]

LEVELS = ("char", "word")


@dataclass
class Vocabulary:
    """One side's pieces (characters or words); piece ``i`` has id ``i + 4``."""

    level: str
    pieces: list[str]

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"unknown tokenizer level {self.level!r}; choose one of {', '.join(LEVELS)}")
        self._ids = {p: i + len(SPECIALS) for i, p in enumerate(self.pieces)}
        if len(self._ids) != len(self.pieces):
            raise CheckpointError("a vocabulary needs distinct pieces")

    @classmethod
    def train(cls, level: str, texts: Iterable[str]) -> Vocabulary:
        pieces: set[str] = set()
        for text in texts:
            pieces.update(cls.split(level, text))
        return cls(level, sorted(pieces))

    @staticmethod
    def split(level: str, text: str) -> list[str]:
        return list(text) if level == "char" else text.split()

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(p, UNK_ID) for p in self.split(self.level, text)]

    def unknown(self, text: str) -> list[str]:
        """The distinct pieces of ``text`` this vocabulary has no id for."""
        return sorted({p for p in self.split(self.level, text) if p not in self._ids})

    def piece(self, token_id: int) -> str:
        """The label of one id, special tokens included (``<pad>``, ``<s>``, ``</s>``, ``<unk>``): for drawings."""
        return SPECIALS[token_id] if 0 <= token_id < len(SPECIALS) else self._text_piece(token_id)

    def _text_piece(self, token_id: int) -> str:
        """The piece of a regular id; ``�`` for any other (``<unk>`` included), as decoded text shows it."""
        index = token_id - len(SPECIALS)
        return self.pieces[index] if 0 <= index < len(self.pieces) else "\ufffd"

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, stopping at the first ``</s>``; padding and ``<s>`` are skipped, unknown ids are ``�``."""
        pieces = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            pieces.append(self._text_piece(i))
        return ("" if self.level == "char" else " ").join(pieces)


class PairTokenizer:
    """``encode_source(text) -> ids`` (ending in ``</s>``), ``decode_target(ids) -> text``; saved as one JSON file."""

    def __init__(self, source: Vocabulary, target: Vocabulary, shared: bool = False) -> None:
        if shared and source is not target:
            raise ConfigError("a shared vocabulary must be one Vocabulary object for both sides")
        self.source, self.target, self.shared = source, target, shared

    @classmethod
    def train(
        cls, pairs: list[tuple[str, str]], source_level: str = "char", target_level: str = "char", shared: bool = False
    ) -> PairTokenizer:
        if shared:
            if source_level != target_level:
                raise ConfigError(
                    f"a shared vocabulary needs the same level on both sides, got source {source_level!r} and "
                    f"target {target_level!r}"
                )
            vocab = Vocabulary.train(source_level, [text for pair in pairs for text in pair])
            return cls(vocab, vocab, shared=True)
        return cls(
            Vocabulary.train(source_level, (s for s, _ in pairs)),
            Vocabulary.train(target_level, (t for _, t in pairs)),
        )

    @property
    def vocab_size(self) -> int:
        """The source vocabulary's size (the ``Tokenizer`` protocol's one number)."""
        return self.source.size

    def encode_source(self, text: str) -> list[int]:
        return self.source.encode(text) + [EOS_ID]

    def encode_target(self, text: str) -> list[int]:
        """``<s> ids </s>``: the decoder reads all but the last and predicts all but the first."""
        return [BOS_ID, *self.target.encode(text), EOS_ID]

    def decode_target(self, ids: Iterable[int]) -> str:
        return self.target.decode(ids)

    # the Tokenizer protocol, so that checkpoints save and load it like any other tokenizer
    encode = encode_source
    decode = decode_target

    def to_dict(self) -> dict[str, Any]:
        side = lambda v: {"level": v.level, "pieces": v.pieces}
        return {
            "qkv_tokenizer": "pair",
            "shared": self.shared,
            "source": side(self.source),
            "target": side(self.target),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> PairTokenizer:
        try:
            sides = [Vocabulary(data[s]["level"], list(data[s]["pieces"])) for s in ("source", "target")]
        except (KeyError, TypeError, ConfigError) as exc:
            raise CheckpointError(f"pair tokenizer {source or ''} is malformed: {exc}") from None
        if data.get("shared"):
            return cls(sides[0], sides[0], shared=True)
        return cls(sides[0], sides[1])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
