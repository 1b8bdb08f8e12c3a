"""Sequence-to-sequence training: pairs + pair tokenizer + an RNN or Transformer encoder-decoder + cross-entropy
with teacher forcing; at the end, exact match / BLEU / chrF on the test (and long) splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sacrebleu
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.pairs import PairData, load_pair_splits
from qkv.errors import ConfigError
from qkv.models.families import SEQ2SEQ, get_family
from qkv.tokenizers.pair import LEVELS, PAD_ID, PairTokenizer
from qkv.training.config import RunConfig
from qkv.training.seq2seq_eval import evaluate_pairs

__all__ = ["Seq2SeqTask", "build_seq2seq", "seq2seq_model"]


@dataclass
class Seq2SeqTask:
    data: PairData
    kind: str
    bleu_tokenize: str = "13a"
    eval_strategy: str = "greedy"
    eval_num_beams: int = 4
    eval_splits: tuple[str, ...] = ("test", "long")

    @property
    def tokens_per_row(self) -> int:
        return round(self.data.mean_target_tokens())

    def batch(self, split: str, batch_size: int, seed: int, step: int, rows: slice | None) -> tuple[Tensor, ...]:
        return self.data.batch(split, batch_size, seed, step, rows)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD_ID)

    def report(self, model: nn.Module, progress: bool = False) -> dict[str, Any]:
        """Exact match, BLEU and chrF on the evaluation splits (the Trainer adds them to metrics.json)."""
        return {
            split: evaluate_pairs(
                model,
                self.data.tokenizer,
                self.data.splits[split],
                strategy=self.eval_strategy,
                num_beams=self.eval_num_beams,
                bleu_tokenize=self.bleu_tokenize,
                progress=progress,
            )
            for split in self.eval_splits
            if self.data.splits.get(split)
        }


def seq2seq_model(kind: str, model_config: Any) -> nn.Module:
    """A fresh model of the sequence-to-sequence family ``kind`` (``rnn-seq2seq``, ``transformer``, ...)."""
    return get_family(kind, protocol=SEQ2SEQ).build(model_config)


def _check_data_config(config: RunConfig) -> None:
    d = config.data
    for side in ("source_tokenizer", "target_tokenizer"):
        if getattr(d, side) not in LEVELS:
            raise ConfigError(f"data.{side} must be one of {', '.join(LEVELS)}, got {getattr(d, side)!r}")
    if d.bleu_tokenize not in sacrebleu.metrics.bleu.BLEU.TOKENIZERS:
        known = ", ".join(sorted(sacrebleu.metrics.bleu.BLEU.TOKENIZERS))
        raise ConfigError(f"data.bleu_tokenize {d.bleu_tokenize!r} is not a sacrebleu tokenizer; known: {known}")
    if d.eval_strategy not in ("greedy", "beam"):
        raise ConfigError(f"data.eval_strategy must be greedy or beam, got {d.eval_strategy!r}")
    if d.eval_num_beams < 1:
        raise ConfigError(f"data.eval_num_beams must be >= 1, got {d.eval_num_beams}")
    if getattr(config.model, "share_embeddings", False) and not d.shared_vocab:
        raise ConfigError("model.share_embeddings needs data.shared_vocab = true (one vocabulary for both sides)")


def build_seq2seq(
    config: RunConfig, tokenizer: PairTokenizer | None = None
) -> tuple[nn.Module, Seq2SeqTask, PairTokenizer]:
    """The model, task and tokenizer of a seq2seq run (a tokenizer from a checkpoint is reused as is)."""
    get_family(config.kind, protocol=SEQ2SEQ)
    _check_data_config(config)
    d, m = config.data, config.model
    splits = load_pair_splits(d.task, d.path, d.seed, d.train_size, d.eval_size)
    if tokenizer is None:
        tokenizer = PairTokenizer.train(splits["train"], d.source_tokenizer, d.target_tokenizer, d.shared_vocab)
    data = PairData(splits, tokenizer)
    m.src_vocab_size, m.tgt_vocab_size = tokenizer.source.size, tokenizer.target.size
    longest_source, longest_target = data.longest()
    limits = {"max_seq_len": max(longest_source, longest_target + 1), "max_source_len": longest_source}
    for name, needed in limits.items():
        if hasattr(m, name) and getattr(m, name) < needed:
            raise ConfigError(f"the data has sequences of {needed} tokens but model.{name}={getattr(m, name)}")
    if m.max_target_len < longest_target:
        raise ConfigError(
            f"the longest target has {longest_target} tokens but model.max_target_len={m.max_target_len} "
            "(the decoding limit); raise it"
        )
    torch.manual_seed(config.train.seed)  # the same initial weights on every process and every run
    model = seq2seq_model(config.kind, m)
    task = Seq2SeqTask(data, config.kind, d.bleu_tokenize, d.eval_strategy, d.eval_num_beams)
    return model, task, tokenizer
