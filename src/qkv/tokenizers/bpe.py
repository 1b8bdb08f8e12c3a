"""Byte-level BPE trained, saved and loaded with HuggingFace ``tokenizers``: any text encodes, nothing is unknown."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from qkv.errors import CheckpointError
from qkv.tokenizers.hf import HFBackedTokenizer

__all__ = ["BPETokenizer"]


class BPETokenizer(HFBackedTokenizer):
    """GPT-2-style byte-level BPE: every string maps to bytes first, so no character is ever unknown."""

    @classmethod
    def train(cls, text: str, vocab_size: int = 512) -> BPETokenizer:
        return cls.train_lines(text.splitlines(keepends=True), vocab_size)

    @classmethod
    def train_lines(cls, lines: Iterable[str], vocab_size: int = 512) -> BPETokenizer:
        """A BPE of ``vocab_size`` tokens trained on ``lines`` (pieces of text, e.g. a corpus' lines)."""
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing can be unknown
            show_progress=False,
        )
        tok.train_from_iterator(lines, trainer=trainer)
        return cls(tok)

    def unknown_characters(self, text: str) -> list[str]:
        return []  # byte-level: every character is some bytes

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the Rust library raises its own exception types
            raise CheckpointError(f"could not load tokenizer {path}: {exc}") from None
