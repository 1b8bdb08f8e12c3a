"""The source/target tokenizer of seq2seq models: special ids, characters and words, unknowns, save and load."""

from __future__ import annotations

import pytest

from qkv.errors import CheckpointError, ConfigError
from qkv.tokenizers import load_tokenizer_file
from qkv.tokenizers.pair import BOS_ID, EOS_ID, PAD_ID, UNK_ID, PairTokenizer

PAIRS = [("312", "three hundred twelve"), ("20", "twenty"), ("7", "seven")]


def test_char_source_word_target_round_trip_with_specials():
    tok = PairTokenizer.train(PAIRS, "char", "word")
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert tok.source.pieces == ["0", "1", "2", "3", "7"] and tok.source.size == 9
    src = tok.encode_source("312")
    assert src[-1] == EOS_ID and len(src) == 4 and min(src[:-1]) >= 4
    tgt = tok.encode_target("three hundred twelve")
    assert tgt[0] == BOS_ID and tgt[-1] == EOS_ID and len(tgt) == 5
    assert tok.decode_target(tgt) == "three hundred twelve"
    # decoding stops at </s> and skips padding
    assert tok.decode_target([*tgt[1:], 4, 5, PAD_ID]) == "three hundred twelve"
    assert tok.source.encode("39") == [tok.source.encode("3")[0], UNK_ID]
    assert tok.source.unknown("3x9") == ["9", "x"]
    assert tok.target.decode([999]) == "\ufffd"
    # labels for drawings name every id, special ones included
    assert [tok.target.piece(i) for i in [PAD_ID, BOS_ID, EOS_ID, UNK_ID, *tgt[1:-1], 999]] == [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "three",
        "hundred",
        "twelve",
        "\ufffd",
    ]


def test_shared_vocabulary_and_its_checks():
    tok = PairTokenizer.train(PAIRS, "char", "char", shared=True)
    assert tok.source is tok.target and "h" in tok.source.pieces and "3" in tok.target.pieces
    with pytest.raises(ConfigError, match="same level on both sides"):
        PairTokenizer.train(PAIRS, "char", "word", shared=True)
    with pytest.raises(ConfigError, match="unknown tokenizer level"):
        PairTokenizer.train(PAIRS, "bytes", "word")


@pytest.mark.parametrize("shared", [False, True])
def test_save_and_load(tmp_path, shared):
    tok = PairTokenizer.train([("2021년 3월", "2021-03")], "char", "char", shared=shared)
    tok.save(tmp_path / "t.json")
    back = load_tokenizer_file(tmp_path / "t.json")
    assert isinstance(back, PairTokenizer) and back.to_dict() == tok.to_dict() and back.shared == shared
    assert back.encode_source("2021년") == tok.encode_source("2021년")
    (tmp_path / "bad.json").write_text('{"qkv_tokenizer": "pair", "source": {"level": "char"}}')
    with pytest.raises(CheckpointError, match="malformed"):
        load_tokenizer_file(tmp_path / "bad.json")
