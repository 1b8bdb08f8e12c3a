"""Language modelling as a training task: tokenizer + data + a causal LM (GPT, Llama, ...) + next-token
cross-entropy."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.text import LMData, load_corpus
from qkv.models.families import CAUSAL_LM, get_family
from qkv.tokenizers import Tokenizer, train_tokenizer
from qkv.training.config import RunConfig

__all__ = ["LMTask", "build_lm"]


@dataclass
class LMTask:
    data: LMData
    kind: str = "gpt"

    @property
    def tokens_per_row(self) -> int:
        return self.data.context

    def batch(self, split: str, batch_size: int, seed: int, step: int, rows: slice | None) -> tuple[Tensor, Tensor]:
        return self.data.batch(split, batch_size, seed, step, rows)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = model(x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def build_lm(config: RunConfig, tokenizer: Tokenizer | None = None) -> tuple[nn.Module, LMTask, Tokenizer]:
    """The model, task and tokenizer of a run (a tokenizer from a checkpoint is reused as is)."""
    text = load_corpus(config.data.path)
    if tokenizer is None:
        tokenizer = train_tokenizer(config.data.tokenizer, text, config.data.bpe_vocab_size)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    unknown = getattr(tokenizer, "unknown_characters", lambda _t: [])(text)
    if unknown:
        warnings.warn(
            f"{len(unknown)} characters of the data are unknown to the tokenizer: {''.join(unknown[:20])!r}",
            stacklevel=2,
        )
    config.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(config.train.seed)  # the same initial weights on every process and every run
    model = get_family(config.kind, protocol=CAUSAL_LM).build(config.model)
    task = LMTask(LMData(ids, config.model.max_seq_len, config.data.val_fraction), kind=config.kind)
    return model, task, tokenizer
