"""How likely a model finds an output: per-token log-probabilities of a continuation or a translation.

The probability of an output is the sign that a model is guessing (the dates model writes 2021-02-30 for
"February 30, 2021" with no other warning). Scores are computed by teacher forcing the finished output through the
model, under its own distribution (not the penalised one a decoding control steered by), for any strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.decoding.stepper import Stepper, decoding_mode
from qkv.devices import model_device
from qkv.errors import ShapeError
from qkv.models.protocols import CausalLM
from qkv.special_tokens import BOS_ID, EOS_ID

__all__ = ["SequenceScores", "score_continuation", "score_translation"]


@dataclass
class SequenceScores:
    """``token_logprobs (batch, new)``: log p of each output token given everything before it (0 after the end);
    ``lengths (batch,)``: tokens that count (up to and with the first end token)."""

    token_logprobs: Tensor
    lengths: Tensor

    @property
    def total(self) -> Tensor:
        """Sum of the log-probabilities ``(batch,)``: the log-probability of the whole output."""
        return self.token_logprobs.sum(dim=-1)

    @property
    def mean(self) -> Tensor:
        """Mean log-probability per token ``(batch,)`` (comparable across lengths)."""
        return self.total / self.lengths.clamp(min=1)

    def describe(self, row: int = 0) -> str:
        n = int(self.lengths[row])
        return (
            f"log-probability {float(self.total[row]):.3f} over {n} token{'' if n == 1 else 's'} "
            f"(mean {float(self.mean[row]):.3f}, per-token probability {float(self.mean[row].exp()):.3f})"
        )


def _until_end(token_logprobs: Tensor, tokens: Tensor, eos_token_id: int | None) -> SequenceScores:
    """Zero the log-probabilities after each row's first end token (padding) and count what is left."""
    if eos_token_id is None:
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], device=tokens.device)
        return SequenceScores(token_logprobs, lengths)
    is_end = (tokens == eos_token_id).long()
    after_end = (is_end.cumsum(dim=1) - is_end) > 0  # strictly after the first end token
    return SequenceScores(token_logprobs.masked_fill(after_end, 0.0), (~after_end).sum(dim=1))


@torch.no_grad()
def score_continuation(
    model: CausalLM, sequences: Tensor, prompt_len: int, eos_token_id: int | None = None
) -> SequenceScores:
    """Scores of ``sequences[:, prompt_len:]`` given what precedes them, for ``sequences (batch, seq)`` from
    :func:`qkv.generate`. Past the model's context each token is scored on the last ``max_seq_len`` tokens, as it
    was generated."""
    if not 0 < prompt_len <= sequences.shape[1]:
        raise ShapeError(f"prompt_len must be in [1, {sequences.shape[1]}], got {prompt_len}")
    sequences = sequences.to(model_device(model))
    context = int(model.config.max_seq_len)
    with decoding_mode(model):
        if sequences.shape[1] <= context:  # one teacher-forced pass
            logits = model(sequences[:, :-1]).logits[:, prompt_len - 1 :]
        else:  # step by step on the cache, sliding the window like the decoder did
            stepper = Stepper(model, sequences.shape[0], use_cache=True)
            logits = torch.stack([stepper.logits(sequences[:, :t]) for t in range(prompt_len, sequences.shape[1])], 1)
    new = sequences[:, prompt_len:]
    token_logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    return _until_end(token_logprobs, new, eos_token_id)


@torch.no_grad()
def score_translation(model: torch.nn.Module, src_ids: Tensor, out_ids: Tensor) -> SequenceScores:
    """Scores of translations ``out_ids (batch, n)`` (as :func:`qkv.translate` returns them: no ``<s>``, ended by
    ``</s>``) of ``src_ids (batch, src_len)``."""
    device = model_device(model)
    src_ids, out_ids = src_ids.to(device), out_ids.to(device)
    start = torch.full((out_ids.shape[0], 1), BOS_ID, dtype=out_ids.dtype, device=device)
    with decoding_mode(model):
        logits = model(src_ids, torch.cat([start, out_ids[:, :-1]], dim=1)).logits
    token_logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, out_ids.unsqueeze(-1)).squeeze(-1)
    return _until_end(token_logprobs, out_ids, EOS_ID)
