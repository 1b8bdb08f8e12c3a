"""Text for language modelling: the bundled corpus or any UTF-8 file, split and served as (input, target) batches.

Batches are a pure function of ``(seed, step)``: the rows of optimizer step ``s`` come from a generator seeded with
both, so a resumed run sees exactly the batches an uninterrupted one would, and ``torchrun`` ranks can each take
their slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from qkv.errors import ConfigError

__all__ = [
    "CORPUS_PATH",
    "Documents",
    "LMData",
    "PackedLMData",
    "ShardDocuments",
    "TokenArray",
    "load_corpus",
    "read_text_file",
    "split_documents",
]

CORPUS_PATH = Path(__file__).parent / "shakespeare" / "plays.txt"


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file with errors that say what is wrong (missing, a directory, empty, not UTF-8)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"data file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"data path {path} is a directory; give a UTF-8 text file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"data file {path} is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not text.strip():
        raise ConfigError(f"data file {path} is empty")
    return text


def load_corpus(path: str | Path | None = None) -> str:
    """The text of ``path``, or the bundled Shakespeare corpus when None/empty."""
    return read_text_file(path if path else CORPUS_PATH)


class TokenArray(Protocol):
    """1-D token ids that can be sliced: a NumPy array, or a shard on disk (:class:`qkv.data.shards.TokenShard`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> np.ndarray: ...


def _as_array(tokens: Tensor | TokenArray) -> TokenArray:
    return tokens.numpy() if isinstance(tokens, Tensor) else tokens


def _step_generator(seed: int, step: int, split: str) -> torch.Generator:
    """The random numbers of one step's batch: a function of the seed, the step and the split only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 2 + (split != "train"))


class LMData:
    """Token ids of a training and a validation split, served as batches of ``context + 1``-token windows.

    Each split is one or more 1-D arrays of ids (the shards of a prepared corpus, read from disk, or tensors); a
    batch's windows are drawn uniformly over every window that lies within one shard, so only the rows of a batch are
    ever read, whatever the corpus' size. With a single array this is the classic sampler: ``randint(len - context)``
    starts.
    """

    def __init__(self, train: Sequence[Tensor | TokenArray], val: Sequence[Tensor | TokenArray], context: int) -> None:
        self.context = context
        self.shards: dict[str, list[TokenArray]] = {"train": [_as_array(t) for t in train],
                                                     "val": [_as_array(t) for t in val]}  # fmt: skip
        # window i of a split is window i - first[k] of shard k, where first[k] <= i < first[k + 1]
        self._first = {}
        for split, shards in self.shards.items():
            windows = [max(0, len(shard) - context) for shard in shards]
            self._first[split] = np.concatenate([[0], np.cumsum(windows)]).astype(np.int64)
            if not self._first[split][-1]:
                name = "training" if split == "train" else "validation"
                raise ConfigError(
                    f"the {name} split has {sum(len(s) for s in shards)} tokens in no shard longer than the context "
                    f"+ 1 = {context + 1}; use more text or a shorter model.max_seq_len"
                )

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets ``(batch, context)`` of step ``step`` (optionally only ``rows`` of it)."""
        first = self._first[split]
        starts = torch.randint(int(first[-1]), (batch_size,), generator=_step_generator(seed, step, split))
        if rows is not None:
            starts = starts[rows]
        shard_of = np.searchsorted(first, starts.numpy(), side="right") - 1
        shards, length = self.shards[split], self.context + 1
        windows = np.stack([shards[k][i - first[k] : i - first[k] + length] for k, i in zip(shard_of, starts.tolist())])
        tokens = torch.from_numpy(windows.astype(np.int64))
        return tokens[:, :-1], tokens[:, 1:]


def split_documents(text: str, separator: str = "\n\n") -> list[str]:
    """The documents of ``text``: the pieces between ``separator`` (blank lines by default), each keeping the
    separator at its end so a model learns where a document ends; empty pieces are dropped."""
    return [piece + separator for piece in text.split(separator) if piece.strip()]


class Documents(Protocol):
    """What :class:`PackedLMData` draws from: a number of documents, each a 1-D tensor of ids."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Tensor: ...


class ShardDocuments:
    """The documents of a split's shards (their ids and where each document starts), as :class:`Documents`; the
    documents of fewer than 2 tokens (which predict nothing) are left out."""

    def __init__(self, shards: Sequence[TokenArray], starts: Sequence[np.ndarray]) -> None:
        self.shards = list(shards)
        self.bounds: list[np.ndarray] = []  # per shard: document k is tokens[bounds[k] : bounds[k + 1]]
        self.kept: list[np.ndarray | None] = []  # per shard: the documents kept (None: all of them)
        counts = []
        for tokens, first in zip(self.shards, starts):
            bounds = np.append(np.asarray(first, dtype=np.int64), len(tokens))
            long_enough = np.diff(bounds) >= 2
            self.bounds.append(bounds)
            self.kept.append(None if long_enough.all() else np.flatnonzero(long_enough))
            counts.append(int(long_enough.sum()))
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getitem__(self, index: int) -> Tensor:
        shard = int(np.searchsorted(self._first, index, side="right") - 1)
        local = index - int(self._first[shard])
        kept = self.kept[shard]
        document = int(kept[local]) if kept is not None else local
        start, end = self.bounds[shard][document : document + 2]
        return torch.from_numpy(self.shards[shard][start:end].astype(np.int64))


class PackedLMData:
    """Documents packed into rows of ``context`` tokens, with the document of each token.

    Each row is filled with windows of randomly drawn documents (a whole document when it fits, else a random
    window of it), back to back; ``(x, y, document_ids)``: inputs, next-token targets within the same document,
    and the document index of each token in its row (0, 0, ..., 1, 1, ...). With a document mask no token sees
    another document, so no position trains on context that is not its own.
    """

    def __init__(self, train: Documents | Sequence[Tensor], val: Documents | Sequence[Tensor], context: int) -> None:
        self.train, self.val = train, val
        self.context = context
        for name, part in (("training", self.train), ("validation", self.val)):
            if not len(part):
                raise ConfigError(
                    f"the {name} split has no document of 2 tokens or more; packing needs text with several "
                    "documents separated by blank lines"
                )

    @classmethod
    def split(cls, documents: list[Tensor], context: int, val_fraction: float = 0.1) -> PackedLMData:
        """The last ``val_fraction`` of ``documents`` (of 2 tokens or more) validate, the others train."""
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        usable = [d for d in documents if len(d) >= 2]  # one token predicts nothing
        split = int(len(usable) * (1 - val_fraction))
        return cls(usable[:split], usable[split:], context)

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, document_ids)``, each ``(batch, context)``, of step ``step`` (optionally only ``rows``)."""
        docs = self.train if split == "train" else self.val
        g = _step_generator(seed, step, split)
        x = torch.empty(batch_size, self.context, dtype=torch.long)
        y = torch.empty_like(x)
        ids = torch.empty_like(x)
        for row in range(batch_size):  # every row is drawn, so a rank's slice is the same rows of the same batch
            filled, number = 0, 0
            while filled < self.context:
                doc = docs[int(torch.randint(len(docs), (1,), generator=g))]
                take = min(len(doc) - 1, self.context - filled)
                start = int(torch.randint(len(doc) - take, (1,), generator=g))
                x[row, filled : filled + take] = doc[start : start + take]
                y[row, filled : filled + take] = doc[start + 1 : start + take + 1]
                ids[row, filled : filled + take] = number
                filled, number = filled + take, number + 1
        if rows is not None:
            x, y, ids = x[rows], y[rows], ids[rows]
        return x, y, ids
