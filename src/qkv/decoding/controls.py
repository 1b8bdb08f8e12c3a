"""What users steer decoding with besides the strategy: repetition penalties, n-gram blocking, a minimum length.

:class:`LogitsControls` rewrites next-token scores ``(rows, vocab)`` given the ids so far ``(rows, seq)``, on the
device and without reading anything back to the host, in the order and with the definitions of HuggingFace's
logits processors (``RepetitionPenaltyLogitsProcessor``, ``NoRepeatNGramLogitsProcessor``,
``MinNewTokensLengthLogitsProcessor``), so a model gives the same tokens under both; ``frequency_penalty`` and
``presence_penalty`` are OpenAI's (subtracted per occurrence / once, counting generated tokens only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import ConfigError

__all__ = ["LogitsControls"]


@dataclass(frozen=True)
class LogitsControls:
    repetition_penalty: float = 1.0  # > 1 discourages every token already in the sequence (prompt included)
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the generated tokens
    presence_penalty: float = 0.0  # subtracted once if the token was generated at all
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice (prompt included)
    min_new_tokens: int = 0  # the end-of-sequence token is barred until this many tokens are new
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ConfigError(
                f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty}"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a finite number >= 0 (0 = off), got {getattr(self, name)}")
        for name in ("no_repeat_ngram_size", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0 (0 = off), got {value!r}")
        if self.min_new_tokens and self.eos_token_id is None:
            raise ConfigError("min_new_tokens needs eos_token_id: it bars that token until enough are new")

    @property
    def active(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty > 0
            or self.presence_penalty > 0
            or self.no_repeat_ngram_size > 0
            or self.min_new_tokens > 0
        )

    def check_context(self, context: int) -> None:
        """``no_repeat_ngram_size`` must fit in the model's context, or it could never apply."""
        if self.no_repeat_ngram_size > context:
            raise ConfigError(
                f"no_repeat_ngram_size ({self.no_repeat_ngram_size}) is larger than the model's context ({context})"
            )

    def __call__(self, scores: Tensor, ids: Tensor, prompt_len: int) -> Tensor:
        """``scores (rows, vocab)`` for the token after ``ids (rows, seq)``, of which the first ``prompt_len`` are
        the prompt; returns new scores (the input is not changed)."""
        if not self.active:
            return scores
        if self.repetition_penalty != 1.0:
            seen = scores.gather(1, ids)
            penalised = torch.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
            scores = scores.scatter(1, ids, penalised)
        if self.frequency_penalty > 0 or self.presence_penalty > 0:
            generated = ids[:, prompt_len:]
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores = scores - self.frequency_penalty * counts - self.presence_penalty * (counts > 0).to(scores.dtype)
        if self.no_repeat_ngram_size > 0:
            scores = scores.masked_fill(self._repeated_ngram_ends(ids, scores.shape[-1]), float("-inf"))
        if ids.shape[1] - prompt_len < self.min_new_tokens:
            scores = scores.clone()
            scores[:, self.eos_token_id] = float("-inf")
        return scores

    def _repeated_ngram_ends(self, ids: Tensor, vocab: int) -> Tensor:
        """``(rows, vocab)`` bool: tokens that would complete an n-gram the row already contains."""
        n = self.no_repeat_ngram_size
        rows, seq = ids.shape
        banned = torch.zeros(rows, vocab, dtype=torch.bool, device=ids.device)
        if seq + 1 < n or seq < n:  # too short for any n-gram to repeat
            return banned
        windows = ids.unfold(1, n, 1)  # (rows, seq - n + 1, n): every n-gram so far
        if n > 1:  # an earlier n-gram whose first n-1 tokens are the row's last n-1
            match = (windows[:, :, :-1] == ids[:, seq - n + 1 :].unsqueeze(1)).all(-1)
        else:  # unigrams: every token seen
            match = torch.ones(windows.shape[:2], dtype=torch.bool, device=ids.device)
        hits = torch.zeros(rows, vocab, dtype=torch.int32, device=ids.device)
        hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))  # (duplicates add up: no overwrite race)
        return hits > 0
