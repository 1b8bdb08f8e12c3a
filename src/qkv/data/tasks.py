"""Seq2seq tasks generated reproducibly from a seed: date normalisation and number-to-words, in English and Korean.

Each task yields ``(source, target)`` string pairs and is split into ``train``/``valid``/``test`` plus a ``long``
split whose inputs are longer than anything in the other splits (to see how attention models extrapolate).

* ``dates``: a date written in one of many human formats, English or Korean ("March 5, 2021", "5 Mar 21",
  "2021년 3월 5일 금요일") -> ISO ``2021-03-05``. Weekday names are always the date's true weekday.
* ``numbers-en``: digits -> English words, ``312`` -> ``three hundred twelve``.
* ``numbers-ko``: digits -> Sino-Korean numerals, ``312`` -> ``삼백십이``.

Any tab-separated file of ``source<TAB>target`` lines is a task too (:func:`read_pairs`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path

from qkv.errors import ConfigError

__all__ = ["TASKS", "english_number", "korean_number", "read_pairs", "task_splits"]

Pair = tuple[str, str]

# -- numbers -------------------------------------------------------------------------------------------------------
_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def _english_below_1000(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n > 0:
        words.append(_ONES[n])
    return words


def english_number(n: int) -> str:
    """``312`` -> ``three hundred twelve`` (American style: no "and"; hyphenated tens)."""
    if n < 0 or n >= 10**12:
        raise ConfigError(f"english_number handles 0 <= n < 10^12, got {n}")
    if n == 0:
        return "zero"
    words = []
    for value, name in _SCALES:
        if n >= value:
            words += _english_below_1000(n // value) + [name]
            n %= value
    return " ".join(words + _english_below_1000(n))


_KO_DIGITS = "영일이삼사오육칠팔구"
_KO_SMALL = [(1000, "천"), (100, "백"), (10, "십")]
_KO_LARGE = [(10**8, "억"), (10**4, "만")]


def _korean_below_10000(n: int) -> str:
    out = ""
    for value, name in _KO_SMALL:
        digit = n // value
        if digit:
            out += ("" if digit == 1 else _KO_DIGITS[digit]) + name  # 1 is not spoken before 십, 백, 천
        n %= value
    return out + (_KO_DIGITS[n] if n else "")


def korean_number(n: int) -> str:
    """``312`` -> ``삼백십이``; ``10000`` -> ``만``; ``0`` -> ``영`` (Sino-Korean numerals, no spaces)."""
    if n < 0 or n >= 10**12:
        raise ConfigError(f"korean_number handles 0 <= n < 10^12, got {n}")
    if n == 0:
        return "영"
    out = ""
    for value, name in _KO_LARGE:
        part = n // value
        if part:
            out += ("" if part == 1 and name == "만" else _korean_below_10000(part)) + name
        n %= value
    return out + _korean_below_10000(n)


# -- dates ---------------------------------------------------------------------------------------------------------
_MONTHS = [dt.date(2000, m, 1).strftime("%B") for m in range(1, 13)]
_WEEKDAYS = [dt.date(2024, 1, d).strftime("%A") for d in range(1, 8)]  # 2024-01-01 is a Monday
_KO_WEEKDAYS = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


DATE_FORMATS: list[Callable[[dt.date], str]] = [
    lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {_MONTHS[d.month - 1][:3]} {d.year % 100:02d}",
    lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{_MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{_WEEKDAYS[d.weekday()]}, {_MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {_MONTHS[d.month - 1]}, {d.year}",
    lambda d: f"{d.year}.{d.month}.{d.day}.",
    lambda d: f"{d.year}년 {d.month}월 {d.day}일",
    lambda d: f"{d.year % 100:02d}년 {d.month}월 {d.day}일",
    lambda d: f"{d.year}년 {d.month}월 {d.day}일 {_KO_WEEKDAYS[d.weekday()]}",
    lambda d: f"{_WEEKDAYS[d.weekday()][:3]} {d.day} {_MONTHS[d.month - 1][:3]} {d.year}",
]


def _date_pair(rng: random.Random) -> Pair:
    # two-digit years are read as 20xx, so the generated dates stay within 2000-2099
    day = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(36524))
    return rng.choice(DATE_FORMATS)(day), day.isoformat()


def _number_pair(rng: random.Random, words: Callable[[int], str], digits: int) -> Pair:
    n = rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)
    return str(n), words(n)


def _number_task(words: Callable[[int], str]) -> Callable[[random.Random, str], Pair]:
    # training draws 1 to 5 digits; evaluation 4 or 5 (every number below 1000 is a training basic, see BASICS);
    # long numbers have 6 digits: longer than any training input, yet every word they need (up to "thousand", and
    # 십만 in Korean) occurs in training, so a model can get them right by composing what it learnt
    def draw(rng: random.Random, split: str) -> Pair:
        if split == "long":
            return _number_pair(rng, words, 6)
        return _number_pair(rng, words, rng.randint(1, 5) if split == "train" else rng.randint(4, 5))

    return draw


TASKS: dict[str, Callable[[random.Random, str], Pair]] = {
    # (rng, split) -> pair; split "long" draws inputs longer than any of the ordinary splits
    "dates": lambda rng, split: _date_of_length(rng, split == "long"),
    "numbers-en": _number_task(english_number),
    "numbers-ko": _number_task(korean_number),
}
#: pairs every training split holds: the "vocabulary" of a task, which evaluation must not take away. Without them,
#: the few one- to three-digit numbers would be drawn into test and valid first, and training would never see
#: "thirteen" on its own.
BASICS: dict[str, Callable[[], list[Pair]]] = {
    "numbers-en": lambda: [(str(n), english_number(n)) for n in range(1000)],
    "numbers-ko": lambda: [(str(n), korean_number(n)) for n in range(1000)],
}
DATE_LONG_MIN = 24  # date inputs of at least this many characters form the long split (the longest reach 29)


def _date_of_length(rng: random.Random, long: bool) -> Pair:
    for _ in range(1000):  # about a quarter of the draws are long: this ends after a few tries
        pair = _date_pair(rng)
        if (len(pair[0]) >= DATE_LONG_MIN) == long:
            return pair
    raise ConfigError(f"no date format gives {'long' if long else 'short'} inputs (DATE_LONG_MIN={DATE_LONG_MIN})")


def task_splits(name: str, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Pair]]:
    """``{"train", "valid", "test", "long"}`` pair lists of task ``name``, disjoint and reproducible from ``seed``.

    The training split starts with the task's :data:`BASICS` (if any), in an order drawn from ``seed``.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)} (or a TSV file via data.path)")
    sizes = sizes or {"train": 20000, "valid": 1000, "test": 1000, "long": 1000}
    rng = random.Random(f"{name}:{seed}")
    basics = BASICS.get(name, list)()
    rng.shuffle(basics)
    basics = basics[: sizes.get("train", 0)]
    seen: set[str] = {src for src, _ in basics}
    splits: dict[str, list[Pair]] = {}
    for split in ("test", "valid", "long", "train"):  # evaluation sets first: train never repeats their inputs
        pairs: list[Pair] = list(basics) if split == "train" else []
        attempts = 0
        while len(pairs) < sizes.get(split, 0):
            attempts += 1
            if attempts > 50 * sizes[split] + 1000:
                raise ConfigError(f"task {name!r} cannot produce {sizes[split]} distinct {split} examples")
            src, tgt = TASKS[name](rng, split)
            if src in seen:
                continue
            seen.add(src)
            pairs.append((src, tgt))
        splits[split] = pairs
    return splits


def read_pairs(path: str | Path) -> list[Pair]:
    """``source<TAB>target`` lines of a UTF-8 file (blank lines skipped); errors name the line."""
    from qkv.data.text import read_text_file

    pairs = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ConfigError(f"{path}:{number}: expected 'source<TAB>target', got {line[:60]!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs
