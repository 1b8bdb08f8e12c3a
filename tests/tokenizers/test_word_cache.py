"""The word-cached byte-level BPE encoder gives HuggingFace's own ids: on random strings of every ASCII character,
on the bundled corpus, past its cache's bound, and (through HuggingFace itself) on text that is not ASCII."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers

import qkv.tokenizers.word_cache as word_cache
from qkv.data.text import load_corpus
from qkv.tokenizers import BPETokenizer
from qkv.tokenizers.word_cache import ASCII_WORDS, WordCachedEncoder

CORPUS = load_corpus()[:60_000]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=600)


def _huggingface(tokenizer: BPETokenizer, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [tokenizer.tokenizer.encode(d).ids for d in documents]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    return np.array([i for e in encoded for i in e], dtype=np.int64), np.cumsum(lengths) - lengths


def _random_documents(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [chr(i) for i in range(128)] + ["'s", "'ll", "'re", " ", "  ", "\n\n", "the", " 12", "ab"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(count)]


def test_the_ascii_split_is_gpt2s_on_every_ascii_character():
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    byte_to_char = {b: c for b, c in zip(range(256), _byte_level_alphabet())}
    for text in _random_documents(0, 3000):
        mine = ["".join(byte_to_char[b] for b in word.encode()) for word in ASCII_WORDS.findall(text)]
        assert mine == [piece for piece, _ in splitter.pre_tokenize_str(text)], repr(text)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes-to-characters table (what the ByteLevel pre-tokenizer shows words in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def test_ids_are_huggingfaces_on_random_text_and_on_the_corpus(bpe):
    encoder = WordCachedEncoder(bpe.tokenizer)
    for documents in (_random_documents(1, 400), CORPUS.split("\n\n"), _random_documents(2, 400)):
        ids, starts = encoder.encode(documents)
        want_ids, want_starts = _huggingface(bpe, documents)
        assert np.array_equal(ids, want_ids) and np.array_equal(starts, want_starts)


def test_past_its_bound_the_cache_starts_again_with_the_same_ids(bpe, monkeypatch):
    monkeypatch.setattr(word_cache, "MAX_WORDS", 50)
    encoder = WordCachedEncoder(bpe.tokenizer)
    documents = CORPUS[:20_000].split("\n")
    for part in (documents[:100], documents[100:]):
        ids, starts = encoder.encode(part)
        assert np.array_equal(ids, _huggingface(bpe, part)[0]) and np.array_equal(starts, _huggingface(bpe, part)[1])
    assert len(encoder.index) <= max(50, len({w for d in documents[100:] for w in ASCII_WORDS.findall(d)}))


def test_text_that_is_not_ascii_is_encoded_by_huggingface(bpe):
    documents = ["café au lait\n\n", "naïve ünïcödé 日本語"]
    ids, starts = WordCachedEncoder(bpe.tokenizer).encode(documents)
    want_ids, want_starts = _huggingface(bpe, documents)
    assert np.array_equal(ids, want_ids) and np.array_equal(starts, want_starts)


def test_a_tokenizer_that_splits_otherwise_is_not_taken():
    other = HFTokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not WordCachedEncoder.applies(other)
    lowered = BPETokenizer.train(CORPUS[:5000], vocab_size=300).tokenizer
    lowered.normalizer = normalizers.Lowercase()
    assert not WordCachedEncoder.applies(lowered)
    with pytest.raises(ValueError, match="GPT-2's split"):
        WordCachedEncoder(other)
