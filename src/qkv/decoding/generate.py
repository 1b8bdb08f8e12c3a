"""``qkv.generate``: greedy, beam search or sampling from any qkv language model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from qkv.attention.frozen import frozen_weights
from qkv.attention.memory import check_fits
from qkv.decoding.beam import beam_search
from qkv.decoding.controls import LogitsControls, Stopping, check_sampling, stopping
from qkv.decoding.stepper import DecodableModel, Stepper, TokenStepper
from qkv.devices import model_device, resolve_compile
from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.models.modes import eval_mode

__all__ = ["generate", "generate_stream"]

STRATEGIES = ("greedy", "beam", "sample")


def _filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Keep the ``top_k`` largest logits and the smallest set whose probability reaches ``top_p``; -inf the rest."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the top token always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_decoding_args(input_ids: Tensor, max_new_tokens: int, strategy: str, **kw: object) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        got = describe_shape(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ShapeError(f"input_ids must be an integer tensor (batch, seq), got {got}")
    if input_ids.shape[1] == 0:
        raise ShapeError("the prompt is empty: give at least one token to continue from")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    check_sampling(kw["temperature"], kw["top_k"], kw["top_p"])  # type: ignore[arg-type]
    if kw["num_beams"] < 1:  # type: ignore[operator]
        raise ConfigError(f"num_beams must be >= 1, got {kw['num_beams']}")
    rows = input_ids.shape[0] * (kw["num_beams"] if strategy == "beam" else 1)  # type: ignore[operator]
    check_fits(  # the ids alone; a KV cache is sized when it is made
        rows * (input_ids.shape[1] + max_new_tokens) * 8,
        f"max_new_tokens={max_new_tokens} for {rows} sequence{'' if rows == 1 else 's'}",
        "ask for fewer new tokens (or fewer beams)",
        input_ids.device,
    )


@torch.no_grad()
def generate(
    model: DecodableModel,
    input_ids: Tensor | list[Tensor],
    max_new_tokens: int,
    strategy: str = "greedy",
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    compile: bool = False,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    stop_when: Callable[[Tensor], bool] | None = None,
    max_time: float | None = None,
    num_return_sequences: int = 1,
    suppress_tokens: Sequence[int] = (),
) -> Tensor:
    """Continue ``input_ids (batch, seq)`` by up to ``max_new_tokens`` tokens; returns ``(batch, seq + new)``.

    ``input_ids`` may also be a list of prompts of different lengths (1-D ids each): they run as one batch, padded
    on the left (never attended to, positions counted from each prompt's start), and the result is a list with each
    prompt followed by its continuation — the tokens it would get alone.

    Args:
        strategy: ``"greedy"`` (argmax), ``"beam"`` (beam search, ``num_beams`` wide, score = sum of log-probs /
            length^``length_penalty``) or ``"sample"`` (``temperature``, then ``top_k`` / ``top_p`` filtering,
            reproducible with ``seed``).
        eos_token_id: a sequence that emits it is finished; the rest of its row is filled with it.
        use_cache: decode on the KV cache (same tokens as without, much faster).
        compile: run the decoding steps through ``torch.compile`` (one graph for every length; the first call
            compiles, which takes seconds to minutes; CPUs need a C++ compiler). Same tokens within float tolerance.
        repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size, min_new_tokens: see
            :class:`~qkv.decoding.controls.LogitsControls` (HuggingFace's definitions; the penalties are off at
            1, 0, 0; beam search applies them to log-probabilities, as HuggingFace does).
        stop_when: ``ids (batch, seq) -> bool``, asked after every step; True ends the generation (e.g.
            :func:`~qkv.decoding.controls.stop_strings`). max_time: seconds, checked after every step.
        suppress_tokens: ids never chosen (HF's ``suppress_tokens``), e.g. a tokenizer's ``<unk>``, which decodes
            to no text.
        num_return_sequences: n sequences per prompt, ``(batch * n, seq + new)`` (rows ``b * n ..`` for prompt b):
            n samples, or beam search's n best, best first (n <= num_beams). Score them with
            :func:`qkv.score_continuation`.
    """
    prompts = input_ids if isinstance(input_ids, (list, tuple)) else None
    left_padding = None
    if prompts is not None:  # prompts of several lengths: one left-padded batch
        input_ids, left_padding = left_pad(prompts)
    check_decoding_args(
        input_ids, max_new_tokens, strategy, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams
    )
    penalties = (repetition_penalty, frequency_penalty, presence_penalty)
    controls = _controls(model, *penalties, no_repeat_ngram_size, min_new_tokens, eos_token_id, tuple(suppress_tokens))
    stops = stopping(stop_when, max_time)
    check_return_sequences(num_return_sequences, strategy, num_beams)
    device = model_device(model)  # prompts, caches and sampling follow the model's device
    input_ids = input_ids.to(device)
    compile = resolve_compile(compile, input_ids.device, what="compile")
    rows_per_prompt = num_beams if strategy == "beam" else num_return_sequences
    if max_new_tokens == 0:  # nothing to add: every strategy returns its prompts, as many rows as it would
        out = input_ids.repeat_interleave(num_return_sequences, dim=0)
        return (
            out if prompts is None else [row[pad:] for row, pad in zip(out, _pads(left_padding, num_return_sequences))]
        )
    padding = None if left_padding is None else left_padding.to(device).repeat_interleave(rows_per_prompt)
    with decoding_mode(model):
        if strategy == "beam":
            stepper = Stepper(model, input_ids.shape[0] * num_beams, use_cache, compile, padding)
            out = beam_search(
                stepper,
                input_ids,
                max_new_tokens,
                num_beams,
                length_penalty,
                eos_token_id,
                controls,
                stops,
                num_return_sequences,
            )
        else:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)  # n samples: n rows per prompt
            stepper = Stepper(model, input_ids.shape[0], use_cache, compile, padding)
            out = decode_loop(
                stepper,
                input_ids,
                max_new_tokens,
                strategy,
                temperature,
                top_k,
                top_p,
                seed,
                eos_token_id,
                controls,
                stopping=stops,
            )
    if prompts is None:
        return out
    return [row[pad:] for row, pad in zip(out, _pads(left_padding, num_return_sequences))]


def _pads(left_padding: Tensor | None, rows_per_prompt: int) -> list[int]:
    """Each output row's left padding (``rows_per_prompt`` rows per prompt)."""
    return [pad for pad in left_padding.tolist() for _ in range(rows_per_prompt)]  # type: ignore[union-attr]


@contextmanager
def decoding_mode(model: object) -> Iterator[None]:
    """Evaluation mode (no dropout) and frozen weights while decoding; the model's mode is restored afterwards."""
    with eval_mode(model), frozen_weights():  # weights do not change while decoding: derived tensors may be reused
        yield


def decode_loop(
    stepper: TokenStepper, input_ids: Tensor, *args: Any, stopping: Stopping | None = None, **kwargs: Any
) -> Tensor:
    """Greedy or sampled continuation of ``input_ids (batch, seq)`` -> ``(batch, seq + new)``: :func:`decode_steps`
    (same arguments) run to its end, or until ``stopping`` says so."""
    steps = decode_steps(stepper, input_ids, *args, **kwargs)
    if stopping is None:
        last = deque(steps, maxlen=1)
        return last[0] if last else input_ids
    ids = input_ids
    stopping.start()
    for ids in steps:
        if stopping(ids):
            break
    return ids


def decode_steps(
    stepper: TokenStepper,
    input_ids: Tensor,
    max_new_tokens: int,
    strategy: str,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id: int | None = None,
    controls: LogitsControls | None = None,
) -> Iterator[Tensor]:
    """:func:`decode_loop` one step at a time: yields ``(batch, seq + t)`` after each new token ``t = 1, 2, ...``."""
    generator = None
    if strategy == "sample":
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    prompt_len = input_ids.shape[1]
    for _ in range(max_new_tokens):
        logits = stepper.logits(ids)
        if controls is not None:
            logits = controls(logits, ids, prompt_len)
        if strategy == "greedy":
            token = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(_filter_logits(logits / temperature, top_k, top_p), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if eos_token_id is not None:
            token = token.masked_fill(done, eos_token_id)
            done |= token == eos_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        yield ids
        if eos_token_id is not None and bool(done.all()):
            break


STREAM_OPTIONS = {
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "seed": None,
    "eos_token_id": None,
    "use_cache": True,
    "compile": False,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
    "stop_when": None,
    "max_time": None,
    "suppress_tokens": (),
}


def generate_stream(
    model: DecodableModel, input_ids: Tensor, max_new_tokens: int, strategy: str = "greedy", **options: Any
) -> Iterator[Tensor]:
    """:func:`generate` token by token: yields each new token, ``(batch,)`` ids, as soon as it is chosen.

    ``options`` are :func:`generate`'s (``temperature``, ``top_k``, ``top_p``, ``seed``, ``eos_token_id``,
    ``use_cache``, ``compile`` and the controls), and the tokens are the ones it returns (greedy or sampling; beam
    search cannot stream, as its best hypothesis is known only at the end). Stop iterating at any time: what was
    yielded stays valid.
    """
    if strategy == "beam":
        raise ConfigError("beam search cannot stream (its best hypothesis is known only at the end); use generate")
    unknown = sorted(set(options) - set(STREAM_OPTIONS))
    if unknown:
        raise ConfigError(f"generate_stream takes no option {', '.join(unknown)}; it takes {', '.join(STREAM_OPTIONS)}")
    o = {**STREAM_OPTIONS, **options}
    check_decoding_args(  # now, not at the first next(): bad arguments fail where the stream is asked for
        input_ids,
        max_new_tokens,
        strategy,
        temperature=o["temperature"],
        top_k=o["top_k"],
        top_p=o["top_p"],
        num_beams=1,
    )
    o["controls"] = _controls(model, *(o[name] for name in _CONTROLS), o["eos_token_id"], tuple(o["suppress_tokens"]))
    o["stopping"] = stopping(o["stop_when"], o["max_time"])
    input_ids = input_ids.to(model_device(model))
    o["compile"] = resolve_compile(o["compile"], input_ids.device, what="compile")
    return _stream(model, input_ids, max_new_tokens, strategy, o)


def left_pad(prompts: list[Tensor] | tuple[Tensor, ...], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts of several lengths (1-D tensors or lists of ids) as one batch ``(batch, longest)`` padded on the
    left with ``pad_id``, and each row's padding ``(batch,)``."""
    rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts]
    if not rows:
        raise ShapeError("no prompts: give at least one")
    empty = [i for i, r in enumerate(rows) if r.numel() == 0]
    if empty:
        raise ShapeError(f"prompt {empty[0]} is empty: give at least one token to continue from")
    longest = max(r.numel() for r in rows)
    batch = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, longest - r.numel() :] = r
    return batch, torch.tensor([longest - r.numel() for r in rows])


def check_return_sequences(n: int, strategy: str, num_beams: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_return_sequences must be an int >= 1, got {n!r}")
    if n > 1 and strategy == "greedy":
        raise ConfigError("greedy decoding has one answer per prompt; for several use strategy='beam' or 'sample'")
    if strategy == "beam" and n > num_beams:
        raise ConfigError(f"num_return_sequences ({n}) cannot exceed num_beams ({num_beams}): a beam keeps no more")


def _controls(model: DecodableModel, *settings: Any) -> LogitsControls:
    """:class:`LogitsControls` from its settings in field order, checked against the model's context."""
    controls = LogitsControls(*settings)
    controls.check_context(int(model.config.max_seq_len))  # type: ignore[attr-defined]
    return controls


_CONTROLS = ("repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size", "min_new_tokens")


def _stream(model: DecodableModel, input_ids: Tensor, max_new_tokens: int, strategy: str, o: dict) -> Iterator[Tensor]:
    with decoding_mode(model):  # eval mode and frozen weights while the stream is open
        stepper = Stepper(model, input_ids.shape[0], o["use_cache"], o["compile"])
        steps = decode_steps(
            stepper,
            input_ids,
            max_new_tokens,
            strategy,
            o["temperature"],
            o["top_k"],
            o["top_p"],
            o["seed"],
            o["eos_token_id"],
            o["controls"],
        )
        stops = o["stopping"] and o["stopping"].start()
        while True:
            with torch.no_grad():  # per step: a no_grad held across a yield would leak into the caller's code
                ids = next(steps, None)
            if ids is None:
                return
            yield ids[:, -1]
            if stops is not None and stops(ids):
                return
