"""Generated seq2seq tasks: correct by hand, reproducible, disjoint splits, a long split longer than training."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from qkv.data.tasks import english_number, korean_number, read_pairs, task_splits
from qkv.errors import ConfigError

ENGLISH = {
    0: "zero",
    13: "thirteen",
    21: "twenty-one",
    100: "one hundred",
    312: "three hundred twelve",
    1001: "one thousand one",
    10010: "ten thousand ten",
    1_000_000: "one million",
    123_456_789: "one hundred twenty-three million four hundred fifty-six thousand seven hundred eighty-nine",
}
KOREAN = {
    0: "영",
    10: "십",
    11: "십일",
    20: "이십",
    100: "백",
    312: "삼백십이",
    1000: "천",
    10000: "만",
    10010: "만십",
    20000: "이만",
    110000: "십일만",
    100_000_000: "일억",
    123_456_789: "일억이천삼백사십오만육천칠백팔십구",
}


@pytest.mark.parametrize(("n", "words"), ENGLISH.items())
def test_english_numbers(n, words):
    assert english_number(n) == words


@pytest.mark.parametrize(("n", "words"), KOREAN.items())
def test_korean_numbers(n, words):
    assert korean_number(n) == words


@pytest.mark.parametrize("task", ["dates", "numbers-en", "numbers-ko"])
def test_splits_are_reproducible_disjoint_and_long_is_longer(task):
    sizes = {"train": 3000, "valid": 200, "test": 200, "long": 200}
    a, b = task_splits(task, seed=1, sizes=sizes), task_splits(task, seed=1, sizes=sizes)
    assert a == b and a != task_splits(task, seed=2, sizes=sizes)
    sources = [{src for src, _ in a[s]} for s in ("train", "valid", "test", "long")]
    assert sum(len(s) for s in sources) == len(set().union(*sources)), "splits overlap"
    ordinary = max(len(src) for split in ("train", "valid", "test") for src, _ in a[split])
    assert min(len(src) for src, _ in a["long"]) > ordinary


def test_dates_are_true_iso_dates_with_true_weekdays():
    splits = task_splits("dates", seed=0, sizes={"train": 2000, "valid": 0, "test": 0, "long": 500})
    pairs = splits["train"] + splits["long"]
    weekdays_en = [dt.date(2024, 1, d).strftime("%A") for d in range(1, 8)]
    weekdays_ko = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"]
    assert any(re.search("[가-힣]", src) for src, _ in pairs) and any(re.search("[A-Za-z]", src) for src, _ in pairs)
    for src, tgt in pairs:
        day = dt.date.fromisoformat(tgt)
        for names in (weekdays_en, weekdays_ko, [w[:3] for w in weekdays_en]):
            for i, name in enumerate(names):
                if re.search(rf"\b{name}\b", src):
                    assert i == day.weekday(), (src, tgt)
        assert str(day.day) in src


def test_read_pairs(tmp_path):
    (tmp_path / "p.tsv").write_text("a b\tc\n\nd\te f\n", encoding="utf-8")
    assert read_pairs(tmp_path / "p.tsv") == [("a b", "c"), ("d", "e f")]
    (tmp_path / "bad.tsv").write_text("one\ttwo\nthree\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        read_pairs(tmp_path / "bad.tsv")
    with pytest.raises(ConfigError, match="unknown task"):
        task_splits("poems")


@pytest.mark.parametrize("task", ["numbers-en", "numbers-ko"])
def test_every_number_below_1000_is_trained_on_and_evaluation_composes(task):
    splits = task_splits(task, seed=1, sizes={"train": 3000, "valid": 100, "test": 100, "long": 50})
    train = {int(src) for src, _ in splits["train"]}
    assert set(range(1000)) <= train and len(splits["train"]) == 3000
    for split in ("valid", "test"):
        assert all(4 <= len(src) <= 5 for src, _ in splits[split])
    assert all(len(src) == 6 for src, _ in splits["long"])
