"""Decoding: greedy, beam search and sampling, all on the KV cache (or a recurrent state), behind ``qkv.generate``
for language models and ``qkv.translate`` for sequence-to-sequence models."""

from qkv.decoding.generate import generate, generate_stream
from qkv.decoding.scores import SequenceScores, score_continuation, score_translation
from qkv.decoding.speculative import SpeculativeResult, speculative_generate
from qkv.decoding.translate import translate

__all__ = [
    "SequenceScores",
    "SpeculativeResult",
    "generate",
    "generate_stream",
    "score_continuation",
    "score_translation",
    "speculative_generate",
    "translate",
]
