"""``qkv.GenerationConfig``: every decoding option in one frozen, validated dataclass.

:func:`qkv.generate`, :func:`qkv.generate_stream`, :func:`qkv.translate` and speculative decoding (``draft_model=``
of ``generate``) all take ``config=None, **overrides``; the CLI's decoding flags are built from the fields below
(their names, types, defaults and the ``help`` in each field's metadata), so an option is written once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from torch import Tensor

from qkv.decoding.controls import LogitsControls, check_sampling
from qkv.errors import ConfigError

__all__ = ["STRATEGIES", "GenerationConfig", "LogitsProcessor", "StoppingCriterion", "Strategy", "resolve_config"]

Strategy = Literal["greedy", "beam", "sample"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

#: HF's ``LogitsProcessor`` shape: ``(ids (rows, seq), scores (rows, vocab)) -> scores (rows, vocab)``
LogitsProcessor = Callable[[Tensor, Tensor], Tensor]
#: HF's ``StoppingCriteria`` shape: ``(ids (rows, seq), scores (rows, vocab)) -> bool`` for every row, or a ``(rows,)``
#: bool tensor, one answer per row
StoppingCriterion = Callable[[Tensor, Tensor], "bool | Tensor"]


def _doc(help: str, *, flag: str | None = None, flag_help: str | None = None) -> dict[str, str]:
    """A field's metadata: the one help text the docs and the CLI show. ``flag``: the CLI's spelling when it is not
    ``--`` + the field's name (a switch that turns the default off), and ``flag_help`` what that switch does."""
    extra = {"flag": flag, "flag_help": flag_help} if flag is not None and flag_help is not None else {}
    return {"help": help, **extra}


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: the strategy, its settings, the logits controls and when to stop.

    Frozen and checked when made: a bad value fails here, naming the field, not steps into a generation. Change
    fields with :meth:`replace` (or pass them as ``**overrides`` to ``qkv.generate``); a name that is not a field is
    an error that suggests the closest one. The defaults are HuggingFace's where HF has the option.
    """

    max_new_tokens: int | None = field(
        default=None,
        metadata=_doc(
            "how many tokens to add at most (unset: as many as the model's context holds after the prompt; a "
            "translation: the model's max_target_len)"
        ),
    )
    strategy: Strategy = field(
        default="greedy",
        metadata=_doc("greedy: the most likely token; beam: beam search; sample: draw from the distribution"),
    )
    temperature: float = field(default=1.0, metadata=_doc("sampling temperature; lower = safer (1 = the model's)"))
    top_k: int | None = field(default=None, metadata=_doc("sample only among the k most likely tokens"))
    top_p: float | None = field(
        default=None, metadata=_doc("sample only among the most likely tokens whose probability sums to p")
    )
    seed: int | None = field(default=None, metadata=_doc("random seed for sampling: same seed, same text"))
    num_beams: int = field(default=4, metadata=_doc("beam width for the beam strategy"))
    length_penalty: float = field(
        default=1.0, metadata=_doc("beam score = sum of log-probs / length ** this (0: no length normalisation)")
    )
    num_return_sequences: int = field(
        default=1, metadata=_doc("n samples, or beam search's n best (best first), per prompt")
    )
    eos_token_id: int | None = field(
        default=None,
        metadata=_doc("a sequence that emits it is finished (a translation: the tokenizer's </s> when unset)"),
    )
    bos_token_id: int | None = field(
        default=None, metadata=_doc("a translation's first token (unset: the tokenizer's <s>)")
    )
    repetition_penalty: float = field(
        default=1.0, metadata=_doc("> 1 makes every token already in the text less likely (HF's definition; 1 = off)")
    )
    frequency_penalty: float = field(
        default=0.0, metadata=_doc("subtracted per earlier use of a generated token (0 = off)")
    )
    presence_penalty: float = field(
        default=0.0, metadata=_doc("subtracted once from each token generated so far (0 = off)")
    )
    no_repeat_ngram_size: int = field(default=0, metadata=_doc("N > 0: never repeat an N-token sequence (0 = off)"))
    min_new_tokens: int = field(default=0, metadata=_doc("no end-of-sequence token before this many new tokens"))
    suppress_tokens: tuple[int, ...] = field(default=(), metadata=_doc("token ids never chosen"))
    logits_processors: tuple[LogitsProcessor, ...] = field(
        default=(),
        metadata=_doc(
            "your own HF-shaped logits processors, (ids, scores) -> scores, applied in order after the built-in "
            "controls (penalties, n-gram blocking, min_new_tokens, suppress_tokens) and before temperature, top_k "
            "and top_p"
        ),
    )
    stopping_criteria: tuple[StoppingCriterion, ...] = field(
        default=(),
        metadata=_doc(
            "your own HF-shaped stopping criteria, (ids, scores) -> bool or (rows,) bool, asked after every step: "
            "generation ends once every row has been told to stop (e.g. qkv.stop_strings)"
        ),
    )
    max_time: float | None = field(default=None, metadata=_doc("stop after this many seconds"))
    use_cache: bool = field(
        default=True,
        metadata=_doc(
            "decode on the KV cache (same tokens, much faster)",
            flag="--no-cache",
            flag_help="recompute every step instead of using the KV cache",
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_doc(
            "torch.compile the decoding step: for GPUs (on CPUs it was measured slower, and needs a C++ compiler); "
            "the first step compiles"
        ),
    )
    num_draft_tokens: int = field(
        default=4, metadata=_doc("speculative decoding (draft_model=): tokens the draft proposes per round")
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.max_new_tokens is not None:
            _check_int("max_new_tokens", self.max_new_tokens, 0)
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        for name in ("num_beams", "num_return_sequences", "num_draft_tokens"):
            _check_int(name, getattr(self, name), 1)
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ConfigError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length_penalty must be finite, got {self.length_penalty}")
        for name in ("eos_token_id", "bos_token_id"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0)
        if self.num_return_sequences > 1 and self.strategy == "greedy":
            raise ConfigError(
                "greedy decoding has one answer per prompt; for several use strategy='beam' or strategy='sample'"
            )
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}): "
                "a beam keeps no more"
            )
        # (lists are fine to pass: stored as tuples, so the config stays hashable and frozen)
        for name in ("suppress_tokens", "logits_processors", "stopping_criteria"):
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        for name in ("logits_processors", "stopping_criteria"):
            bad = [type(f).__name__ for f in getattr(self, name) if not callable(f)]
            if bad:
                raise ConfigError(f"{name} must be callables (ids, scores) -> ..., got {', '.join(bad)}")
        self.logits_controls(self.eos_token_id if self.eos_token_id is not None else 0)  # checks the controls
        if self.max_time is not None and (
            isinstance(self.max_time, bool)
            or not isinstance(self.max_time, (int, float))
            or not (math.isfinite(self.max_time) and self.max_time > 0)
        ):
            raise ConfigError(f"max_time must be a number of seconds > 0, got {self.max_time!r}")

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with ``overrides`` set (checked again); an unknown name is an error naming the closest field."""
        check_field_names(overrides)
        return dataclasses.replace(self, **overrides) if overrides else self

    def logits_controls(self, eos_token_id: int | None, extra_suppressed: Sequence[int] = ()) -> LogitsControls:
        """The built-in controls of this config, for a model whose end-of-sequence token is ``eos_token_id``."""
        return LogitsControls(
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            min_new_tokens=self.min_new_tokens,
            eos_token_id=eos_token_id,
            suppress_tokens=tuple(dict.fromkeys((*self.suppress_tokens, *extra_suppressed))),
        )


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")


def _as_tuple(name: str, value: object) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list or tuple, got {type(value).__name__}")
    return tuple(value)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationConfig))


def check_field_names(names: Sequence[str] | dict[str, object]) -> None:
    """Every name is a :class:`GenerationConfig` field; otherwise a one-line error that suggests the closest."""
    for name in names:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the fields are {', '.join(FIELDS)}"
            raise ConfigError(f"{name!r} is not a decoding option (a GenerationConfig field){hint}")


def resolve_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    """``config`` (default: ``GenerationConfig()``) with ``overrides`` applied: what every decoding entry point
    calls first."""
    if config is None:
        config = GenerationConfig()
    elif not isinstance(config, GenerationConfig):
        hint = " (the number of new tokens is max_new_tokens=...)" if isinstance(config, int) else ""
        raise ConfigError(f"config must be a qkv.GenerationConfig, got {type(config).__name__}{hint}")
    return config.replace(**overrides)
