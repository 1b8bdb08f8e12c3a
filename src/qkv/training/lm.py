"""Language modelling as a training task: tokenizer + data + a causal LM (GPT, Llama, ...) + next-token
cross-entropy."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.text import LMData, PackedLMData, load_corpus, split_documents
from qkv.errors import ConfigError
from qkv.models.families import CAUSAL_LM, get_family
from qkv.tokenizers import Tokenizer, train_tokenizer
from qkv.training.config import RunConfig

__all__ = ["LMTask", "build_lm"]


@dataclass
class LMTask:
    data: LMData | PackedLMData
    kind: str = "gpt"

    @property
    def tokens_per_row(self) -> int:
        return self.data.context

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        return self.data.batch(split, batch_size, seed, step, rows)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y, *documents = batch  # packed batches carry the document of each token
        logits = model(x, document_ids=documents[0]).logits if documents else model(x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def build_lm(config: RunConfig, tokenizer: Tokenizer | None = None) -> tuple[nn.Module, LMTask, Tokenizer]:
    """The model, task and tokenizer of a run (a tokenizer from a checkpoint is reused as is)."""
    text = load_corpus(config.data.path)
    if tokenizer is None:
        tokenizer = train_tokenizer(config.data.tokenizer, text, config.data.bpe_vocab_size)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    unknown = getattr(tokenizer, "unknown_characters", _nothing_unknown)(text)
    if unknown:
        warnings.warn(
            f"{len(unknown)} characters of the data are unknown to the tokenizer: {''.join(unknown[:20])!r}",
            stacklevel=2,
        )
    config.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(config.train.seed)  # the same initial weights on every process and every run
    model = get_family(config.kind, protocol=CAUSAL_LM).build(config.model)
    if config.data.pack:
        if "document_ids" not in inspect.signature(model.forward).parameters:
            raise ConfigError(f"data.pack = true needs a model that takes document_ids; {config.kind} does not")
        documents = [torch.tensor(tokenizer.encode(d), dtype=torch.long) for d in split_documents(text)]
        data: LMData | PackedLMData = PackedLMData(documents, config.model.max_seq_len, config.data.val_fraction)
    else:
        data = LMData(ids, config.model.max_seq_len, config.data.val_fraction)
    task = LMTask(data, kind=config.kind)
    return model, task, tokenizer


def _nothing_unknown(_text: str) -> list[str]:
    """A tokenizer without ``unknown_characters`` (bytes-level BPE) knows every character."""
    return []
