"""What a step of the tour is: the numbers it computed (the text quotes them, the tests check them) and its
figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Step"]


@dataclass
class Step:
    key: str  # names the step's text in qkv.tour.text
    numbers: dict[str, Any] = field(default_factory=dict)  # what the text cites, by name
    # (caption key, PNG): one PNG for every language, or one per language when the figure has words in it
    figures: list[tuple[str, bytes | dict[str, bytes]]] = field(default_factory=list)
    # (header, rows); a header cell is one string for every language or an (English, Korean) pair
    tables: list[tuple[list[str | tuple[str, str]], list[list[str]]]] = field(default_factory=list)
    # (caption key, explorer): interactive views (qkv.show's) drawn in the page and in notebooks
    explorers: list[tuple[str, Any]] = field(default_factory=list)
    unavailable: str | None = None  # a text key saying why a part cannot be shown (instead of a meaningless picture)
