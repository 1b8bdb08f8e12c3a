"""From a run config to the model, task and tokenizer it trains, for every kind of run."""

from __future__ import annotations

from typing import Any

from torch import nn

from qkv.training.config import RunConfig

__all__ = ["build_run"]


def build_run(config: RunConfig, tokenizer: Any = None) -> tuple[nn.Module, Any, Any]:
    """``(model, task, tokenizer)`` of ``config.kind`` (``gpt``, ``rnn-seq2seq`` or ``transformer``)."""
    if config.kind == "gpt":
        from qkv.training.lm import build_lm

        return build_lm(config, tokenizer)
    from qkv.training.seq2seq import build_seq2seq

    return build_seq2seq(config, tokenizer)
