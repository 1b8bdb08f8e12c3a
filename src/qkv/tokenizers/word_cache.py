"""Byte-level BPE over ASCII text at several times HuggingFace ``tokenizers``' speed, with the same ids.

A byte-level BPE first splits text into words with GPT-2's pattern, then encodes each word on its own; corpora
repeat their words endlessly, so encoding each distinct word once and looking the rest up does the same work a
fraction of the times. On ASCII text GPT-2's pattern (``\\p{L}``, ``\\p{N}``, ``\\s`` of the Unicode classes) is
exactly :data:`ASCII_WORDS` (Python's ``re`` with ASCII classes: a test checks the two splits agree on random
strings of every ASCII character), so the ids are HuggingFace's own. Other text goes to HuggingFace as it is.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

__all__ = ["ASCII_WORDS", "WordCachedEncoder", "concatenate_ids", "huggingface_ids"]

# GPT-2's pre-tokenization pattern, for ASCII text
ASCII_WORDS = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)
MAX_WORDS = 1 << 20  # the cache starts again past this many distinct words (a bound on its memory)


def huggingface_ids(tokenizer: HFTokenizer, texts: list[str]) -> list[list[int]]:
    """HuggingFace's ids of each of ``texts``, without special tokens (in parallel, in the Rust library)."""
    return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def concatenate_ids(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids back to back ``(total,)`` int64, and where each list starts in it."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    return flat, np.cumsum(lengths) - lengths


class WordCachedEncoder:
    """``encode`` of a byte-level BPE tokenizer (GPT-2's split, no normalizer): HuggingFace's ids, each distinct
    word encoded once. The words seen are kept as one flat array of ids and each word's place in it."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        if not self.applies(tokenizer):
            raise ValueError("WordCachedEncoder needs a byte-level BPE with GPT-2's split and no normalizer")
        self.tokenizer = tokenizer
        self._forget()

    def _forget(self) -> None:
        self.index: dict[str, int] = {}  # word -> its number
        self.ids = np.zeros(0, dtype=np.int64)  # every known word's ids, back to back
        self.first = np.zeros(0, dtype=np.int64)  # word number -> where its ids start in self.ids
        self.length = np.zeros(0, dtype=np.int64)  # word number -> how many ids it has

    @staticmethod
    def applies(tokenizer: HFTokenizer) -> bool:
        """Whether ``tokenizer`` splits words exactly as :data:`ASCII_WORDS` does (and adds nothing)."""
        config = json.loads(tokenizer.to_str())
        pre = config.get("pre_tokenizer") or {}
        return (
            config.get("normalizer") is None
            and config["model"].get("type") == "BPE"
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
        )

    def _learn(self, words: list[str]) -> None:
        """Encode the ``words`` not known yet (all at once, in parallel in the Rust library) and keep their ids."""
        new = list(set(words).difference(self.index))
        if len(self.index) + len(new) > MAX_WORDS:  # (memory stays bounded on corpora of endless distinct words)
            self._forget()
            new = list(set(words))
        if not new:
            return
        flat, starts = concatenate_ids(huggingface_ids(self.tokenizer, new))
        self.index.update(zip(new, range(len(self.index), len(self.index) + len(new))))
        self.first = np.concatenate([self.first, len(self.ids) + starts])
        self.length = np.concatenate([self.length, np.diff(starts, append=len(flat))])
        self.ids = np.concatenate([self.ids, flat])

    def encode(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of ``documents`` (each encoded on its own, as ``encode_batch`` would), back to back, and where
        each document's ids start."""
        if not all(d.isascii() for d in documents):
            return concatenate_ids(huggingface_ids(self.tokenizer, documents))
        per_document = [ASCII_WORDS.findall(d) for d in documents]
        words = list(itertools.chain.from_iterable(per_document))
        self._learn(words)
        number = np.fromiter(map(self.index.__getitem__, words), dtype=np.int64, count=len(words))
        lengths = self.length[number]
        begins = np.cumsum(lengths) - lengths  # where each word's ids go in the output
        # output position p holds self.ids[first[w] + (p - begins[w])] for the word w it falls in
        position = np.arange(int(lengths.sum())) + np.repeat(self.first[number] - begins, lengths)
        word_counts = np.fromiter(map(len, per_document), dtype=np.int64, count=len(per_document))
        return self.ids[position], begins[np.cumsum(word_counts) - word_counts]
