"""What users steer decoding with besides the strategy: repetition penalties, n-gram blocking, a minimum length,
and when to stop (a test on the ids, stop strings, a time limit).

:class:`LogitsControls` rewrites next-token scores ``(rows, vocab)`` given the ids so far ``(rows, seq)``, on the
device and without reading anything back to the host, in the order and with the definitions of HuggingFace's
logits processors (``RepetitionPenaltyLogitsProcessor``, ``NoRepeatNGramLogitsProcessor``,
``MinNewTokensLengthLogitsProcessor``), so a model gives the same tokens under both; ``frequency_penalty`` and
``presence_penalty`` are OpenAI's (subtracted per occurrence / once, counting generated tokens only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import ConfigError

__all__ = ["LogitsControls", "Stopping", "check_sampling", "stop_strings", "stopping"]


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """The sampling settings every sampler shares (text and images alike): ``temperature`` a finite number > 0
    (NaN would make every probability NaN, infinity every token equally likely: noise), ``top_k >= 1``, ``top_p`` in
    ``(0, 1]``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0 (1 = the model's distribution), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")


@dataclass(frozen=True)
class LogitsControls:
    repetition_penalty: float = 1.0  # > 1 discourages every token already in the sequence (prompt included)
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the generated tokens
    presence_penalty: float = 0.0  # subtracted once if the token was generated at all
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice (prompt included)
    min_new_tokens: int = 0  # the end-of-sequence token is barred until this many tokens are new
    eos_token_id: int | None = None
    suppress_tokens: tuple[int, ...] = ()  # never chosen (HF's suppress_tokens): e.g. <unk>, which is no text

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
        object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))  # (a list is fine to pass)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.suppress_tokens):
            raise ConfigError(f"suppress_tokens must be token ids (ints >= 0), got {self.suppress_tokens!r}")
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
            or bool(self.suppress_tokens)
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
        if self.suppress_tokens:
            scores = scores.index_fill(1, self._suppressed(scores.device), float("-inf"))
        return scores

    def _suppressed(self, device: torch.device) -> Tensor:
        """``suppress_tokens`` as a tensor on ``device``, made once (no host-to-device copy per step)."""
        cache = self.__dict__.setdefault("_suppressed_on", {})
        if device not in cache:
            cache[device] = torch.tensor(self.suppress_tokens, dtype=torch.long, device=device)
        return cache[device]

    def _repeated_ngram_ends(self, ids: Tensor, vocab: int) -> Tensor:
        """``(rows, vocab)`` bool: tokens that would complete an n-gram the row already contains."""
        n = self.no_repeat_ngram_size
        rows, seq = ids.shape
        banned = torch.zeros(rows, vocab, dtype=torch.bool, device=ids.device)
        if seq < n:  # too short for any n-gram to repeat
            return banned
        windows = ids.unfold(1, n, 1)  # (rows, seq - n + 1, n): every n-gram so far
        if n > 1:  # an earlier n-gram whose first n-1 tokens are the row's last n-1
            match = (windows[:, :, :-1] == ids[:, seq - n + 1 :].unsqueeze(1)).all(-1)
        else:  # unigrams: every token seen
            match = torch.ones(windows.shape[:2], dtype=torch.bool, device=ids.device)
        hits = torch.zeros(rows, vocab, dtype=torch.int32, device=ids.device)
        hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))  # (duplicates add up: no overwrite race)
        return hits > 0


@dataclass
class Stopping:
    """When to stop before ``max_new_tokens``: ``when(ids (batch, seq)) -> bool`` called after each new token (a
    stop string, a user's own test), and ``max_time`` seconds. A check reads the ids back to the host, once per step,
    so it is made only when one is asked for."""

    when: Callable[[Tensor], bool] | None = None
    max_time: float | None = None

    def __post_init__(self) -> None:
        if self.max_time is not None and not (math.isfinite(self.max_time) and self.max_time > 0):
            raise ConfigError(f"max_time must be a number of seconds > 0, got {self.max_time}")
        if self.when is not None and not callable(self.when):
            raise ConfigError(f"a stopping test must be callable (ids -> bool), got {type(self.when).__name__}")
        self._deadline = math.inf

    def start(self) -> Stopping:
        self._deadline = time.monotonic() + self.max_time if self.max_time is not None else math.inf
        return self

    def __call__(self, ids: Tensor) -> bool:
        return time.monotonic() >= self._deadline or (self.when is not None and bool(self.when(ids)))


def stopping(when: Callable[[Tensor], bool] | None, max_time: float | None) -> Stopping | None:
    """A checked :class:`Stopping` when either is given; None otherwise (no per-step check at all)."""
    return Stopping(when, max_time) if when is not None or max_time is not None else None


def stop_strings(
    strings: Sequence[str], decode: Callable[[list[int]], str], prompt_len: int
) -> Callable[[Tensor], bool]:
    """A stopping test: true once every row's new text has contained one of ``strings`` (matched on decoded text,
    so across token boundaries; the output keeps the string, as HuggingFace's ``stop_strings``). Each step decodes
    only each row's last tokens: as many as the longest string has characters, and two more for tokens that are
    parts of one character. Rows that stop early keep generating until all have stopped."""
    strings = list(strings)
    if not strings or any(not isinstance(s, str) or not s for s in strings):
        raise ConfigError(f"stop strings must be non-empty strings, got {strings!r}")
    window = max(len(s) for s in strings) + 2
    stopped: set[int] = set()

    def test(ids: Tensor) -> bool:
        for index, row in enumerate(ids[:, prompt_len:].tolist()):
            if index not in stopped and any(s in decode(row[-window:]) for s in strings):
                stopped.add(index)
        return len(stopped) == ids.shape[0]

    return test
