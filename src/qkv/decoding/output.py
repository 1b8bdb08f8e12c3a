"""What ``qkv.generate(..., return_dict=True)`` returns (HF's ``return_dict_in_generate``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["GenerateOutput"]


@dataclass
class GenerateOutput:
    """A generation and how it was made.

    Attributes:
        sequences: ``(rows, seq + new)`` prompts and their continuations (a list of 1-D tensors when the prompts
            were a list), rows ``b * n .. b * n + n - 1`` for prompt b with ``num_return_sequences = n``.
        scores: per step, the scores ``(rows, vocab)`` the step's token was chosen from: after the controls and your
            processors (sampling: also temperature, top_k, top_p; beam search: log-probabilities, one row per beam,
            ``(batch * num_beams, vocab)``). Empty for speculative decoding.
        beam_indices: beam search only, ``(rows, new)``: for each returned sequence and step, the beam row (of the
            ``batch * num_beams`` rows the model ran on) whose scores chose that step's token; -1 after the
            sequence ended. HF's ``beam_indices``; :meth:`qkv.AttentionCapture.weights` follows it.
        drafted, accepted: speculative decoding only: tokens the draft proposed, and of those, kept.
    """

    sequences: Tensor | list[Tensor]
    scores: tuple[Tensor, ...]
    beam_indices: Tensor | None = None
    drafted: int | None = None
    accepted: int | None = None

    @property
    def acceptance_rate(self) -> float | None:
        """Speculative decoding: the share of drafted tokens kept (None otherwise)."""
        if self.drafted is None or self.accepted is None:
            return None
        return self.accepted / self.drafted if self.drafted else 0.0
