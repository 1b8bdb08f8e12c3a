"""The tokenizer of a pretrained directory (``tokenizer.json``, or a BERT ``vocab.txt``), batching with padding."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from torch import Tensor

from qkv.errors import CheckpointError
from qkv.tokenizers.hf import HFBackedTokenizer

__all__ = ["PretrainedTokenizer"]


class PretrainedTokenizer(HFBackedTokenizer):
    """Wraps a HuggingFace ``tokenizers`` tokenizer; ``batch(texts)`` gives ``input_ids`` and ``attention_mask``."""

    def __init__(self, tokenizer: HFTokenizer, max_length: int = 512, pad_id: int = 0) -> None:
        super().__init__(tokenizer)
        # the file's own padding/truncation (e.g. fixed padding to 128) is replaced by ours: pad to the longest
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length, self.pad_id = max_length, pad_id

    @classmethod
    def from_directory(cls, directory: Path, max_length: int = 512) -> PretrainedTokenizer:
        try:
            if (directory / "tokenizer.json").is_file():
                tok = HFTokenizer.from_file(str(directory / "tokenizer.json"))
            elif (directory / "vocab.txt").is_file():
                tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)._tokenizer
            else:
                raise CheckpointError(f"{directory} has neither tokenizer.json nor vocab.txt")
        except CheckpointError:
            raise
        except Exception as exc:  # the Rust library raises its own types
            raise CheckpointError(f"could not read the tokenizer in {directory}: {exc}") from None
        pad = tok.token_to_id("[PAD]")
        return cls(tok, max_length, pad if pad is not None else 0)

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def cut(self, texts: list[str]) -> list[int]:
        """The indices of ``texts`` longer than ``max_length`` tokens: :meth:`batch` keeps only their beginning."""
        return [i for i, e in enumerate(self.tokenizer.encode_batch(texts)) if e.overflowing]

    def batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``input_ids`` and ``attention_mask`` ``(n, longest)``, right-padded, truncated to ``max_length``."""
        encodings = self.tokenizer.encode_batch(texts)
        longest = max((len(e.ids) for e in encodings), default=0)
        ids = torch.full((len(texts), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[row, : len(e.ids)] = 1
        return ids, mask
