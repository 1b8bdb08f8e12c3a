"""Data: the bundled corpus and generated tasks, text batches, prepared (sharded) corpora, images.

The names below load on first use, so ``qkv prepare`` (which needs no PyTorch) starts without importing it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qkv.data.text import CORPUS_PATH, LMData, load_corpus, read_text_file

__all__ = ["CORPUS_PATH", "LMData", "load_corpus", "read_text_file"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("qkv.data.text"), name)
    raise AttributeError(f"module 'qkv.data' has no attribute {name!r}")
