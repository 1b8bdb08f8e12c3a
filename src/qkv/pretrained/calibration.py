"""Calibration text for int8 weights rounded by GPTQ (:mod:`qkv.attention.gptq`): what feeds a loaded model so its
linear layers' inputs can be recorded, and the bundled lines ``qkv.embed`` calibrates on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from qkv.data.text import load_corpus
from qkv.errors import ConfigError
from qkv.pretrained.tokenizer import PretrainedTokenizer

__all__ = ["CALIBRATION_LINES", "MAX_CALIBRATION_TOKENS", "bundled_calibration", "calibration_feed"]

# 256 lines gave MiniLM's int8 embeddings a worst cosine of 0.99947 to fp32 over 1,000 other lines (rounding to
# nearest: 0.99808); recording them costs ~3 s on 2 CPU cores, rounding the weights by GPTQ ~4 s
CALIBRATION_LINES = 256
# the statistics GPTQ needs (which input features are large, and how they correlate) come from many short texts;
# long ones only cost time, and could exceed a small model's context
MAX_CALIBRATION_TOKENS = 128
_ROWS_PER_CALL = 64


def bundled_calibration(n: int = CALIBRATION_LINES) -> list[str]:
    """The last ``n`` lines longer than 20 characters of the bundled plays (the end of the corpus, so text measured
    from its beginning — as ``benchmarks/precision.py`` does — is not what the weights were calibrated on)."""
    lines = [line.strip() for line in load_corpus().splitlines() if len(line.strip()) > 20]
    return lines[-n:]


def calibration_feed(
    tokenizer: PretrainedTokenizer, texts: Sequence[str], context: int | None = None
) -> Callable[[nn.Module], None]:
    """A function that runs a model on ``texts``, each tokenized alone (special tokens included, cut to
    :data:`MAX_CALIBRATION_TOKENS` and to ``context``), texts of one length batched together so no position is
    padding: every row a linear layer sees is a real token's."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ConfigError("calibration takes a non-empty list of non-empty strings")
    limit = min(MAX_CALIBRATION_TOKENS, context or MAX_CALIBRATION_TOKENS)
    by_length: dict[int, list[list[int]]] = defaultdict(list)
    for encoding in tokenizer.tokenizer.encode_batch(list(texts)):
        ids = encoding.ids[:limit]
        by_length[len(ids)].append(ids)

    def feed(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for rows in by_length.values():
            for start in range(0, len(rows), _ROWS_PER_CALL):
                model(torch.tensor(rows[start : start + _ROWS_PER_CALL], device=device))

    return feed
