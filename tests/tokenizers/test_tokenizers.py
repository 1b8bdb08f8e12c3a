"""Tokenizers round-trip, never crash on unknown characters, and load back from their files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qkv.data import load_corpus
from qkv.errors import CheckpointError
from qkv.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer_file

CORPUS = load_corpus()[:20000]


def test_char_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train(CORPUS)
    assert tok.decode(tok.encode(CORPUS)) == CORPUS
    ids = tok.encode("Hamlet 안녕")
    assert ids[-2:] == [0, 0] and tok.decode(ids).endswith("\ufffd\ufffd")
    assert tok.unknown_characters("x안") == ["안"]
    tok.save(tmp_path / "t.json")
    again = load_tokenizer_file(tmp_path / "t.json")
    assert isinstance(again, CharTokenizer) and again.encode(CORPUS[:500]) == tok.encode(CORPUS[:500])


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=400)


@given(st.text(max_size=60))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_saves_and_loads(bpe, tmp_path):
    bpe.save(tmp_path / "bpe.json")
    again = load_tokenizer_file(tmp_path / "bpe.json")
    text = "To be, or not to be: 그것이 문제로다 🙂"
    assert again.encode(text) == bpe.encode(text) and again.decode(again.encode(text)) == text
    # 144 merges on top of the 256 bytes already shorten English text by more than 30%
    assert bpe.vocab_size == 400 and len(bpe.encode(CORPUS)) < 0.7 * len(CORPUS)


def test_load_tokenizer_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_tokenizer_file(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="neither"):
        load_tokenizer_file(tmp_path / "other.json")
