"""Decoding: greedy, beam search, sampling and speculative decoding, all on the KV cache (or a recurrent state),
behind ``qkv.generate`` for language models and ``qkv.translate`` for sequence-to-sequence models; one
:class:`GenerationConfig` says how."""

from qkv.decoding.config import GenerationConfig, LogitsProcessor, StoppingCriterion
from qkv.decoding.controls import stop_strings
from qkv.decoding.generate import generate, generate_stream
from qkv.decoding.output import GenerateOutput
from qkv.decoding.scores import SequenceScores, score_continuation, score_translation
from qkv.decoding.translate import translate

__all__ = [
    "GenerateOutput",
    "GenerationConfig",
    "LogitsProcessor",
    "SequenceScores",
    "StoppingCriterion",
    "generate",
    "generate_stream",
    "score_continuation",
    "score_translation",
    "stop_strings",
    "translate",
]
