"""Parallel text for sequence-to-sequence training: splits of (source, target) pairs, encoded and batched.

A batch is ``(src (batch, src_len), tgt_in (batch, tgt_len), tgt_out (batch, tgt_len))``, padded with id 0:
``tgt_in`` is ``<s> y_1 … y_n`` (what the decoder reads) and ``tgt_out`` is ``y_1 … y_n </s>`` (what it predicts).
Which pairs form the batch of a step depends only on ``(seed, step)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.data.tasks import TASKS, Pair, read_pairs, task_splits
from qkv.errors import ConfigError
from qkv.tokenizers.pair import PAD_ID, PairTokenizer

__all__ = ["PairData", "load_pair_splits", "pad_rows"]

SPLIT_NAMES = {"val": "valid"}  # the Trainer evaluates "train" and "val"


def load_pair_splits(
    task: str, path: str = "", seed: int = 0, train_size: int = 20000, eval_size: int = 1000
) -> dict[str, list[Pair]]:
    """``train``/``valid``/``test`` (and ``long`` for generated tasks) pairs of a generated task or a TSV file.

    A TSV file is shuffled with ``seed`` and split 90/5/5; it has no ``long`` split.
    """
    if path:
        pairs = read_pairs(path)
        if len(pairs) < 20:
            raise ConfigError(f"{path} has {len(pairs)} pairs; a seq2seq run needs at least 20 (90/5/5 split)")
        random.Random(seed).shuffle(pairs)
        n_eval = max(1, len(pairs) // 20)
        return {"test": pairs[:n_eval], "valid": pairs[n_eval : 2 * n_eval], "train": pairs[2 * n_eval :]}
    if task not in TASKS:
        raise ConfigError(f"unknown data.task {task!r}; choose one of {', '.join(TASKS)} or give data.path=pairs.tsv")
    sizes = {"train": train_size, "valid": eval_size, "test": eval_size, "long": eval_size}
    return task_splits(task, seed, sizes)


def pad_rows(rows: list[list[int]]) -> Tensor:
    """``(len(rows), longest)`` int64, padded on the right with id 0."""
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@dataclass
class PairData:
    """Pairs of every split, encoded once with ``tokenizer``."""

    splits: dict[str, list[Pair]]
    tokenizer: PairTokenizer

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.encoded = {
            name: [(tok.encode_source(s), tok.encode_target(t)) for s, t in pairs]
            for name, pairs in self.splits.items()
        }

    def longest(self) -> tuple[int, int]:
        """The most source tokens (with ``</s>``) and target tokens (with ``</s>``) of any pair of any split."""
        rows = [pair for split in self.encoded.values() for pair in split]
        return max(len(s) for s, _ in rows), max(len(t) - 1 for _, t in rows)

    def mean_target_tokens(self) -> float:
        train = self.encoded["train"]
        return sum(len(t) - 1 for _, t in train) / len(train)

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The batch of ``step``: ``batch_size`` pairs drawn from ``split`` (``rows`` keeps a slice of them)."""
        data = self.encoded[SPLIT_NAMES.get(split, split)]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = torch.randint(len(data), (batch_size,), generator=generator).tolist()
        if rows is not None:
            picks = picks[rows]
        chosen = [data[i] for i in picks]
        targets = pad_rows([t for _, t in chosen])
        return pad_rows([s for s, _ in chosen]), targets[:, :-1], targets[:, 1:]
