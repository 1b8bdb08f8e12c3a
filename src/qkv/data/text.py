"""Text for language modelling: the bundled corpus or any UTF-8 file, split and served as (input, target) batches.

Batches are a pure function of ``(seed, step)``: the rows of optimizer step ``s`` come from a generator seeded with
both, so a resumed run sees exactly the batches an uninterrupted one would, and ``torchrun`` ranks can each take
their slice of the same global batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from qkv.errors import ConfigError

__all__ = ["CORPUS_PATH", "LMData", "PackedLMData", "load_corpus", "read_text_file", "split_documents"]

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


class LMData:
    """Token ids split into train (first ``1 - val_fraction``) and validation (the rest), served as batches."""

    def __init__(self, ids: Tensor, context: int, val_fraction: float = 0.1) -> None:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        split = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:split], ids[split:]
        self.context = context
        for name, part in (("training", self.train), ("validation", self.val)):
            if len(part) <= context:
                raise ConfigError(
                    f"the {name} split has {len(part)} tokens, fewer than the context + 1 = {context + 1}; "
                    "use more text or a shorter model.max_seq_len"
                )

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets ``(batch, context)`` of step ``step`` (optionally only ``rows`` of it)."""
        data = self.train if split == "train" else self.val
        g = torch.Generator().manual_seed(seed * 1_000_003 + step * 2 + (split != "train"))
        starts = torch.randint(len(data) - self.context, (batch_size,), generator=g)
        if rows is not None:
            starts = starts[rows]
        offsets = torch.arange(self.context)
        x = data[starts[:, None] + offsets]
        y = data[starts[:, None] + offsets + 1]
        return x, y


def split_documents(text: str, separator: str = "\n\n") -> list[str]:
    """The documents of ``text``: the pieces between ``separator`` (blank lines by default), each keeping the
    separator at its end so a model learns where a document ends; empty pieces are dropped."""
    return [piece + separator for piece in text.split(separator) if piece.strip()]


class PackedLMData:
    """Documents packed into rows of ``context`` tokens, with the document of each token.

    Each row is filled with windows of randomly drawn documents (a whole document when it fits, else a random
    window of it), back to back; ``(x, y, document_ids)``: inputs, next-token targets within the same document,
    and the document index of each token in its row (0, 0, ..., 1, 1, ...). With a document mask no token sees
    another document, so no position trains on context that is not its own. Documents are split into train and
    validation in order (the last ``val_fraction`` of them validate).
    """

    def __init__(self, documents: list[Tensor], context: int, val_fraction: float = 0.1) -> None:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        usable = [d for d in documents if len(d) >= 2]  # one token predicts nothing
        split = int(len(usable) * (1 - val_fraction))
        self.train, self.val = usable[:split], usable[split:]
        self.context = context
        for name, part in (("training", self.train), ("validation", self.val)):
            if not part:
                raise ConfigError(
                    f"the {name} split has no document of 2 tokens or more ({len(usable)} in all); packing needs "
                    "text with several documents separated by blank lines"
                )

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, document_ids)``, each ``(batch, context)``, of step ``step`` (optionally only ``rows``)."""
        docs = self.train if split == "train" else self.val
        g = torch.Generator().manual_seed(seed * 1_000_003 + step * 2 + (split != "train"))
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
