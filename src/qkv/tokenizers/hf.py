"""The part every tokenizer backed by HuggingFace ``tokenizers`` shares."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

__all__ = ["HFBackedTokenizer"]


class HFBackedTokenizer:
    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))
