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

from qkv.errors import ConfigError, ShapeError, describe_shape

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


class Stopping:
    """When to stop before ``max_new_tokens``: HF-shaped criteria ``(ids (rows, seq), scores (rows, vocab)) -> bool``
    (every row) or a ``(rows,)`` bool tensor (each row), asked after each new token, and ``max_time`` seconds.

    A row once told to stop stays stopped (it keeps decoding until all have stopped, as HF's rows do, so a batch
    keeps its shape); the generation ends when every row has. A check reads back to the host once per step, so a
    :class:`Stopping` is made only when something is asked for (:func:`stopping`).
    """

    def __init__(
        self, criteria: Sequence[Callable[[Tensor, Tensor], bool | Tensor]] = (), max_time: float | None = None
    ) -> None:
        self.criteria = tuple(criteria)
        self.max_time = max_time
        self._deadline = math.inf
        self._stopped: Tensor | None = None

    def start(self) -> Stopping:
        """Start the clock and forget earlier answers (one generation per start)."""
        self._deadline = time.monotonic() + self.max_time if self.max_time is not None else math.inf
        self._stopped = None
        return self

    def __call__(self, ids: Tensor, scores: Tensor, *, per_row: bool = True) -> bool:
        """True when generation should end. ``per_row=False`` (beam search, whose rows change hypotheses every
        step): a row's earlier answers are not kept."""
        if time.monotonic() >= self._deadline:
            return True
        if not self.criteria:
            return False
        stopped = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for criterion in self.criteria:
            answer = criterion(ids, scores)
            if isinstance(answer, Tensor):
                if answer.shape != (ids.shape[0],):
                    raise ShapeError(
                        f"a stopping criterion returned {describe_shape(answer.shape)}; it must return a bool or "
                        f"one bool per row ({ids.shape[0]},)"
                    )
                stopped |= answer.to(device=ids.device, dtype=torch.bool)
            elif answer:
                stopped[:] = True
        if per_row and self._stopped is not None and self._stopped.shape == stopped.shape:
            stopped |= self._stopped
        self._stopped = stopped
        return bool(stopped.all())


def stopping(criteria: Sequence[Callable[[Tensor, Tensor], bool | Tensor]], max_time: float | None) -> Stopping | None:
    """A :class:`Stopping` when a criterion or a time limit is given; None otherwise (no per-step check at all)."""
    return Stopping(criteria, max_time) if criteria or max_time is not None else None


def stop_strings(
    strings: Sequence[str], decode: Callable[[list[int]], str], prompt_len: int
) -> Callable[[Tensor, Tensor], Tensor]:
    """A stopping criterion: a row stops once its new text contains one of ``strings`` (matched on decoded text, so
    across token boundaries; the output keeps the string, as HuggingFace's ``stop_strings``). Each step decodes only
    each row's last tokens: as many as the longest string has characters, and two more for tokens that are parts of
    one character."""
    strings = list(strings)
    if not strings or any(not isinstance(s, str) or not s for s in strings):
        raise ConfigError(f"stop strings must be non-empty strings, got {strings!r}")
    window = max(len(s) for s in strings) + 2

    def criterion(ids: Tensor, scores: Tensor) -> Tensor:
        rows = ids[:, prompt_len:].tolist()
        return torch.tensor([any(s in decode(row[-window:]) for s in strings) for row in rows], device=ids.device)

    return criterion
