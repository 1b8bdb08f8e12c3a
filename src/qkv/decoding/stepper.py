"""Next-token logits for a growing batch of sequences, with or without a KV cache.

The model always conditions on the last ``max_seq_len`` tokens. With a cache, each step feeds only the newest token;
when the cache is full, it is refilled from the last ``max_seq_len`` tokens, which is exactly what the no-cache path
computes, so both give the same tokens.
"""

from __future__ import annotations

import typing
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from qkv.attention.frozen import frozen_weights
from qkv.models.modes import eval_mode
from qkv.models.protocols import CausalLM, Seq2SeqLM

__all__ = [
    "Seq2SeqStepper",
    "Stepper",
    "TokenStepper",
    "compiled_for_decoding",
    "decoding_mode",
]


@contextmanager
def decoding_mode(model: object) -> Iterator[None]:
    """Evaluation mode (no dropout) and frozen weights while decoding; the model's mode is restored afterwards."""
    with eval_mode(model), frozen_weights():  # weights do not change while decoding: derived tensors may be reused
        yield


class TokenStepper(Protocol):
    """What greedy, sampling and beam search need: next-token logits, and keeping chosen rows."""

    def logits(self, ids: Tensor) -> Tensor: ...

    def reorder(self, rows: Tensor) -> None: ...


_compiled: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def compiled_for_decoding(model: CausalLM) -> CausalLM:
    """``torch.compile(model, dynamic=True)``, made once per model and kept while the model lives.

    Dynamic shapes: the cached length grows by one every step, and one graph serves every length (a static graph
    would be recompiled each step). The model's forward has no graph break (tests/decoding/test_compiled.py).
    """
    module = typing.cast(nn.Module, model)
    if module not in _compiled:
        if next(module.parameters()).device.type == "cpu":
            warnings.warn(
                "compiling the decoding step on a CPU: measured slower than plain decoding there (2.3x for a "
                "6-layer GPT, see README); compile pays on GPUs",
                stacklevel=4,
            )
        _compiled[module] = typing.cast(nn.Module, torch.compile(module, dynamic=True))
    return typing.cast(CausalLM, _compiled[module])


class Stepper:
    """Steps a decoder-only language model (GPT). ``compile``: the one-token steps on the cache (and, without a
    cache, every step) run a ``torch.compile``d model; filling the cache from the prompt runs the plain one."""

    def __init__(
        self,
        model: CausalLM,
        batch_size: int,
        use_cache: bool,
        compile: bool = False,
        left_padding: Tensor | None = None,
    ) -> None:
        self.model = model
        self.step_model = compiled_for_decoding(model) if compile else model
        self.context = int(model.config.max_seq_len)
        self.cache = model.new_cache(batch_size) if use_cache else None
        self.left_padding = left_padding  # (batch,) padding before each row's prompt (prompts of several lengths)
        self.cut = 0  # tokens before the cache's first position (the window slid past them)

    def _model_kwargs(self, cut: int) -> dict[str, Any]:
        """The model's ``left_padding`` argument for a window that starts ``cut`` tokens into the rows (and
        ``logits_to_keep=1``: only the last position's logits are used)."""
        if self.left_padding is None:
            return {"logits_to_keep": 1}
        return {"left_padding": (self.left_padding - cut).clamp(min=0), "logits_to_keep": 1}

    def logits(self, ids: Tensor) -> Tensor:
        """Logits ``(batch, vocab)`` of the token after ``ids (batch, seq)``, in fp32."""
        window = ids[:, -self.context :]
        cut = ids.shape[1] - window.shape[1]
        if self.cache is None:
            return self.step_model(window, **self._model_kwargs(cut)).logits[:, -1].float()
        cached = self.cache.seq_len(0)
        if cached == 0 or cached >= self.context or cached != ids.shape[1] - 1 - self.cut:
            self.cache.reset()  # first step, or a full cache: (re)fill from the window
            self.cut = cut
            return self.model(window, cache=self.cache, **self._model_kwargs(cut)).logits[:, -1].float()
        return self.step_model(ids[:, -1:], cache=self.cache, **self._model_kwargs(self.cut)).logits[:, -1].float()

    def reorder(self, rows: Tensor) -> None:
        """Keep cache rows ``rows`` (beam search)."""
        if self.cache is not None:
            self.cache.reorder(rows)


class Seq2SeqStepper:
    """Steps the decoder of a sequence-to-sequence model over an encoded source.

    The model speaks :class:`Seq2SeqLM`; its state has ``select(rows)``.
    """

    def __init__(self, model: Seq2SeqLM, src_ids: Tensor) -> None:
        self.model = model
        self.state = model.begin_decoding(src_ids)

    def logits(self, ids: Tensor) -> Tensor:
        logits, self.state = self.model.decode_next(ids, self.state)
        return logits.float()

    def reorder(self, rows: Tensor) -> None:
        self.state = self.state.select(rows)
