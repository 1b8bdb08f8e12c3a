"""``qkv.generate``: greedy, beam search, sampling or speculative decoding from any qkv language model."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any, Literal, overload

import torch
from torch import Tensor

from qkv.attention.memory import check_fits
from qkv.decoding.beam import beam_search
from qkv.decoding.config import GenerationConfig, resolve_config
from qkv.decoding.controls import LogitsControls, Stopping, stopping
from qkv.decoding.output import GenerateOutput
from qkv.decoding.speculative import speculative_decode
from qkv.decoding.stepper import Stepper, TokenStepper, decoding_mode
from qkv.devices import model_device, resolve_compile
from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.models.protocols import CausalLM

__all__ = ["generate", "generate_stream"]


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


def check_prompt_ids(input_ids: object) -> Tensor:
    """``input_ids`` is a non-empty integer tensor ``(batch, seq)``; returned as it is."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        got = describe_shape(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ShapeError(f"input_ids must be an integer tensor (batch, seq), got {got}")
    if input_ids.shape[1] == 0:
        raise ShapeError("the prompt is empty: give at least one token to continue from")
    return input_ids


def check_ids_fit(input_ids: Tensor, max_new_tokens: int, config: GenerationConfig) -> None:
    """The ids of every row of the generation fit in memory (a KV cache is sized when it is made)."""
    rows = input_ids.shape[0] * (config.num_beams if config.strategy == "beam" else config.num_return_sequences)
    check_fits(
        rows * (input_ids.shape[1] + max_new_tokens) * 8,
        f"max_new_tokens={max_new_tokens} for {rows} sequence{'' if rows == 1 else 's'}",
        "ask for fewer new tokens (or fewer beams)",
        input_ids.device,
    )


def new_token_budget(model: CausalLM, config: GenerationConfig, prompt_len: int) -> int:
    """``config.max_new_tokens``, or (unset) as many as the model's context holds after the prompt."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    context = int(model.config.max_seq_len)
    if prompt_len >= context:
        raise ConfigError(
            f"the prompt ({prompt_len} tokens) fills the model's context ({context}): say how many tokens to add "
            "with max_new_tokens="
        )
    return context - prompt_len


@overload
def generate(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    return_dict: Literal[False] = False,
    draft_model: CausalLM | None = None,
    **overrides: Any,
) -> Tensor: ...
@overload
def generate(
    model: CausalLM,
    input_ids: list[Tensor] | tuple[Tensor, ...],
    config: GenerationConfig | None = None,
    *,
    return_dict: Literal[False] = False,
    draft_model: CausalLM | None = None,
    **overrides: Any,
) -> list[Tensor]: ...
@overload
def generate(
    model: CausalLM,
    input_ids: Tensor | list[Tensor] | tuple[Tensor, ...],
    config: GenerationConfig | None = None,
    *,
    return_dict: Literal[True],
    draft_model: CausalLM | None = None,
    **overrides: Any,
) -> GenerateOutput: ...
@torch.no_grad()
def generate(
    model: CausalLM,
    input_ids: Tensor | list[Tensor] | tuple[Tensor, ...],
    config: GenerationConfig | None = None,
    *,
    return_dict: bool = False,
    draft_model: CausalLM | None = None,
    **overrides: Any,
) -> Tensor | list[Tensor] | GenerateOutput:
    """Continue ``input_ids (batch, seq)``; returns ``(batch * num_return_sequences, seq + new)``.

    ``config`` (a :class:`~qkv.GenerationConfig`, default: its defaults) says how, and ``**overrides`` change any
    of its fields for this call: ``qkv.generate(model, ids, max_new_tokens=50, strategy="sample", seed=0)``.

    ``input_ids`` may also be a list of prompts of different lengths (1-D ids each): they run as one batch, padded
    on the left (never attended to, positions counted from each prompt's start), and the result is a list with each
    prompt followed by its continuation — the tokens it would get alone.

    Args:
        return_dict: return a :class:`~qkv.GenerateOutput` (HF's ``return_dict_in_generate``): ``sequences``, the
            ``scores`` each token was chosen from, beam search's ``beam_indices`` (what
            :meth:`~qkv.AttentionCapture.weights` follows to show the chosen beam's attention) and, with a draft
            model, how many drafted tokens were accepted.
        draft_model: speculative decoding (HF's ``assistant_model``): a small model with the same vocabulary
            proposes ``num_draft_tokens`` tokens, ``model`` checks them in one pass. Greedy gives exactly
            ``model``'s greedy output, sampling exactly its distribution; one prompt, no controls.
    """
    cfg = resolve_config(config, overrides)
    prompts = input_ids if isinstance(input_ids, (list, tuple)) else None
    left_padding = None
    if prompts is not None:  # prompts of several lengths: one left-padded batch
        input_ids, left_padding = left_pad(prompts)
    ids = check_prompt_ids(input_ids)
    max_new = new_token_budget(model, cfg, ids.shape[1])
    check_ids_fit(ids, max_new, cfg)
    controls = model_controls(model, cfg)
    stops = stopping(cfg.stopping_criteria, cfg.max_time)
    ids = ids.to(model_device(model))  # prompts, caches and sampling follow the model's device
    cfg = cfg.replace(compile=resolve_compile(cfg.compile, ids.device, what="compile"))
    n = cfg.num_return_sequences
    if draft_model is not None:
        out = _speculative(model, draft_model, ids, max_new, cfg, controls, prompts is not None)
    elif max_new == 0:  # nothing to add: every strategy returns its prompts, as many rows as it would
        out = GenerateOutput(ids.repeat_interleave(n, dim=0), ())
    else:
        rows_per_prompt = cfg.num_beams if cfg.strategy == "beam" else n
        padding = None if left_padding is None else left_padding.to(ids.device).repeat_interleave(rows_per_prompt)
        with decoding_mode(model):
            if cfg.strategy == "beam":
                stepper = Stepper(model, ids.shape[0] * cfg.num_beams, cfg.use_cache, cfg.compile, padding)
                out = beam_search(stepper, ids, max_new, cfg, controls, stops, keep_scores=return_dict)
            else:
                ids = ids.repeat_interleave(n, dim=0)  # n samples: n rows per prompt
                stepper = Stepper(model, ids.shape[0], cfg.use_cache, cfg.compile, padding)
                out = decode_loop(stepper, ids, max_new, cfg, controls, stops, keep_scores=return_dict)
    if prompts is not None:
        pads = [pad for pad in left_padding.tolist() for _ in range(n)]  # type: ignore[union-attr]  # (set above)
        out.sequences = [row[pad:] for row, pad in zip(out.sequences, pads)]
    return out if return_dict else out.sequences


def model_controls(model: CausalLM, config: GenerationConfig) -> LogitsControls:
    """The config's built-in controls, checked against the model's context."""
    controls = config.logits_controls(config.eos_token_id)
    controls.check_context(int(model.config.max_seq_len))
    return controls


def _speculative(
    model: CausalLM,
    draft_model: CausalLM,
    ids: Tensor,
    max_new: int,
    cfg: GenerationConfig,
    controls: LogitsControls,
    several_prompts: bool,
) -> GenerateOutput:
    """Speculative decoding, then (past the shared context, or for the last token) plain decoding with ``model``."""
    if several_prompts or ids.shape[0] != 1:
        raise ShapeError("speculative decoding continues one prompt: input_ids must be (1, seq)")
    if cfg.strategy == "beam" or cfg.num_return_sequences > 1:
        raise ConfigError("speculative decoding is greedy or sample, one sequence (no beams, num_return_sequences=1)")
    unsupported = [name for name in ("top_k", "top_p", "eos_token_id", "max_time") if getattr(cfg, name) is not None]
    if controls.active or cfg.logits_processors or cfg.stopping_criteria or unsupported or not cfg.use_cache:
        raise ConfigError(
            "speculative decoding (draft_model=) takes strategy, temperature, seed, max_new_tokens and "
            "num_draft_tokens only: no logits controls, processors, stopping criteria, top_k/top_p, eos_token_id, "
            "max_time or use_cache=False"
        )
    end = ids.shape[1] + max_new
    with decoding_mode(model), decoding_mode(draft_model):
        ids, drafted, accepted = speculative_decode(model, draft_model, ids, end, cfg)
    if ids.shape[1] < end:  # the last token, or past the context: plainly, with the target alone
        ids = generate(model, ids, cfg, max_new_tokens=end - ids.shape[1])
    return GenerateOutput(ids, (), drafted=drafted, accepted=accepted)


def decode_loop(
    stepper: TokenStepper,
    input_ids: Tensor,
    max_new_tokens: int,
    config: GenerationConfig,
    controls: LogitsControls | None,
    stopping: Stopping | None = None,
    *,
    keep_scores: bool = False,
) -> GenerateOutput:
    """Greedy or sampled continuation of ``input_ids (batch, seq)`` -> ``(batch, seq + new)``: :func:`decode_steps`
    run to its end, or until ``stopping`` says so; ``keep_scores`` keeps each step's scores ``(batch, vocab)``."""
    ids, scores = input_ids, []
    if stopping is not None:
        stopping.start()
    for ids, step_scores in decode_steps(stepper, input_ids, max_new_tokens, config, controls):
        if keep_scores:
            scores.append(step_scores)
        if stopping is not None and stopping(ids, step_scores):
            break
    return GenerateOutput(ids, tuple(scores))


def decode_steps(
    stepper: TokenStepper,
    input_ids: Tensor,
    max_new_tokens: int,
    config: GenerationConfig,
    controls: LogitsControls | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`decode_loop` one step at a time: yields ``(batch, seq + t)`` after each new token ``t = 1, 2, ...``,
    with the scores ``(batch, vocab)`` the token was chosen from (after the controls, the user's processors and, for
    sampling, temperature, top_k and top_p)."""
    generator = None
    if config.strategy == "sample":
        generator = torch.Generator(device=input_ids.device)
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        generator.manual_seed(seed)
    eos = config.eos_token_id
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    prompt_len = input_ids.shape[1]
    for _ in range(max_new_tokens):
        scores = stepper.logits(ids)
        if controls is not None:
            scores = controls(scores, ids, prompt_len)
        for processor in config.logits_processors:
            scores = processor(ids, scores)
        if config.strategy == "greedy":
            token = scores.argmax(dim=-1)
        else:
            scores = _filter_logits(scores / config.temperature, config.top_k, config.top_p)
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(-1)
        if eos is not None:
            token = token.masked_fill(done, eos)
            done |= token == eos
        ids = torch.cat([ids, token[:, None]], dim=1)
        yield ids, scores
        if eos is not None and bool(done.all()):
            break


def generate_stream(
    model: CausalLM, input_ids: Tensor, config: GenerationConfig | None = None, **overrides: Any
) -> Generator[Tensor, None, None]:
    """:func:`generate` token by token: yields each new token, ``(batch,)`` ids, as soon as it is chosen.

    Takes ``generate``'s ``config`` and ``**overrides``, and the tokens are the ones it returns (greedy or sampling;
    beam search cannot stream, as its best hypothesis is known only at the end). Stop iterating at any time: what
    was yielded stays valid. Bad settings fail here, not at the first ``next()``.
    """
    cfg = resolve_config(config, overrides)
    if cfg.strategy == "beam":
        raise ConfigError("beam search cannot stream (its best hypothesis is known only at the end); use generate")
    if cfg.num_return_sequences > 1:
        raise ConfigError("generate_stream yields one token per prompt: use generate for num_return_sequences > 1")
    ids = check_prompt_ids(input_ids)
    max_new = new_token_budget(model, cfg, ids.shape[1])
    check_ids_fit(ids, max_new, cfg)
    controls = model_controls(model, cfg)
    stops = stopping(cfg.stopping_criteria, cfg.max_time)
    ids = ids.to(model_device(model))
    cfg = cfg.replace(compile=resolve_compile(cfg.compile, ids.device, what="compile"))
    return _stream(model, ids, max_new, cfg, controls, stops)


def _stream(
    model: CausalLM,
    input_ids: Tensor,
    max_new_tokens: int,
    config: GenerationConfig,
    controls: LogitsControls,
    stops: Stopping | None,
) -> Generator[Tensor, None, None]:
    with decoding_mode(model):  # eval mode and frozen weights while the stream is open
        stepper = Stepper(model, input_ids.shape[0], config.use_cache, config.compile)
        steps = decode_steps(stepper, input_ids, max_new_tokens, config, controls)
        if stops is not None:
            stops.start()
        while True:
            with torch.no_grad():  # per step: a no_grad held across a yield would leak into the caller's code
                step = next(steps, None)
            if step is None:
                return
            ids, scores = step
            yield ids[:, -1]
            if stops is not None and stops(ids, scores):
                return


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
