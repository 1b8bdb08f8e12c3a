"""Encoding a corpus' pieces into token ids: each document on its own, in worker processes when it pays.

A character tokenizer is a table lookup (hundreds of MB/s in one process). A byte-level BPE encodes ASCII text
through :class:`qkv.tokenizers.word_cache.WordCachedEncoder` (HuggingFace's ids, each distinct word encoded once),
which is Python-bound: large inputs are spread over one worker process per core, results taken back in order,
with a bounded number of pieces in flight so memory stays flat.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from qkv.data.sources import document_starts
from qkv.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer_file
from qkv.tokenizers.word_cache import WordCachedEncoder, concatenate_ids, huggingface_ids

__all__ = ["PieceEncoder", "encode_documents"]

PARALLEL_BYTES = 64 << 20  # below this, starting worker processes costs more than it saves
T = TypeVar("T")


def encode_documents(
    tokenizer: Tokenizer, text: str, words: WordCachedEncoder | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ids of ``text``'s documents (each encoded on its own) and where each document's ids start."""
    starts = document_starts(text)
    if isinstance(tokenizer, CharTokenizer):  # one id per character: the starts are the same
        return tokenizer.encode_array(text), starts
    documents = [text[a:b] for a, b in itertools.pairwise([*starts.tolist(), len(text)])]
    if words is not None:
        return words.encode(documents)
    if isinstance(tokenizer, BPETokenizer):
        ids = huggingface_ids(tokenizer.tokenizer, documents)
    else:
        ids = [tokenizer.encode(d) for d in documents]
    return concatenate_ids(ids)


def _word_cache(tokenizer: Tokenizer) -> WordCachedEncoder | None:
    if isinstance(tokenizer, BPETokenizer) and WordCachedEncoder.applies(tokenizer.tokenizer):
        return WordCachedEncoder(tokenizer.tokenizer)
    return None


# a worker process's tokenizer (set by _start_worker)
_worker: tuple[Tokenizer, WordCachedEncoder | None] | None = None


def _start_worker(tokenizer_file: str) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)
    tokenizer = load_tokenizer_file(tokenizer_file)
    _worker = (tokenizer, _word_cache(tokenizer))


def _encode_in_worker(text: str) -> tuple[np.ndarray, np.ndarray]:
    assert _worker is not None
    ids, starts = encode_documents(_worker[0], text, _worker[1])
    return ids.astype(np.uint32), starts  # (half the bytes back through the pipe)


class PieceEncoder:
    """Encodes ``(key, text)`` items in order, in this process or in ``workers`` processes."""

    def __init__(self, tokenizer: Tokenizer, tokenizer_file: Path, input_bytes: int) -> None:
        self.tokenizer, self.tokenizer_file = tokenizer, tokenizer_file
        self.words = _word_cache(tokenizer)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        slow = not isinstance(tokenizer, CharTokenizer)
        self.workers = cores if slow and cores > 1 and input_bytes >= PARALLEL_BYTES else 0

    def map(self, items: Iterable[tuple[T, str]]) -> Iterator[tuple[T, tuple[np.ndarray, np.ndarray]]]:
        if not self.workers:
            for key, text in items:
                yield key, encode_documents(self.tokenizer, text, self.words)
            return
        context = multiprocessing.get_context("spawn")  # (forking a process that may hold threads is unsafe)
        pool = ProcessPoolExecutor(self.workers, context, initializer=_start_worker,
                                   initargs=(str(self.tokenizer_file),))  # fmt: skip
        pending: deque[tuple[T, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        try:
            for key, text in items:
                pending.append((key, pool.submit(_encode_in_worker, text)))
                if len(pending) > 2 * self.workers:  # a bounded number of pieces in flight
                    done_key, future = pending.popleft()
                    yield done_key, future.result()
            while pending:
                done_key, future = pending.popleft()
                yield done_key, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
