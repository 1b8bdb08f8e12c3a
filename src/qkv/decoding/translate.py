"""``qkv.translate``: greedy, beam search or sampling from a sequence-to-sequence model (RNN or Transformer)."""

from __future__ import annotations

from typing import Any, Literal, cast, overload

import torch
from torch import Tensor

from qkv.decoding.beam import beam_search
from qkv.decoding.config import GenerationConfig, resolve_config
from qkv.decoding.controls import stopping
from qkv.decoding.generate import check_ids_fit, decode_loop
from qkv.decoding.output import GenerateOutput
from qkv.decoding.stepper import Seq2SeqStepper, decoding_mode
from qkv.devices import model_device
from qkv.errors import ConfigError
from qkv.models.protocols import Seq2SeqLM
from qkv.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["alignment", "cross_attention", "translate"]

NO_ALIGNMENT = "this model has no attention (the no-attention baseline): there is no alignment to show"


@overload
def translate(
    model: torch.nn.Module,
    src_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    return_dict: Literal[False] = False,
    **overrides: Any,
) -> Tensor: ...
@overload
def translate(
    model: torch.nn.Module,
    src_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    return_dict: Literal[True],
    **overrides: Any,
) -> GenerateOutput: ...
@torch.no_grad()
def translate(
    model: torch.nn.Module,
    src_ids: Tensor,
    config: GenerationConfig | None = None,
    *,
    return_dict: bool = False,
    **overrides: Any,
) -> Tensor | GenerateOutput:
    """Target ids ``(batch * num_return_sequences, n)`` for sources ``src_ids (batch, src_len)`` (0 = padding).

    The source is encoded once; the decoder starts from ``bos_token_id`` (default ``<s>``) and stops at
    ``eos_token_id`` (default ``</s>``) or after ``max_new_tokens`` (default: the model's ``max_target_len``). Rows
    are returned without ``<s>``, and a row that ended early is filled with ``</s>``. ``config`` and
    ``**overrides`` are :func:`qkv.generate`'s (the controls count output tokens only; padding, ``<s>`` and
    ``<unk>`` are never written); :func:`qkv.score_translation` scores the outputs.
    """
    cfg = resolve_config(config, overrides)
    if cfg.compile or not cfg.use_cache:
        raise ConfigError(
            "translate always decodes step by step on the decoder's state: compile and use_cache=False are for "
            "language models"
        )
    eos = EOS_ID if cfg.eos_token_id is None else cfg.eos_token_id
    bos = BOS_ID if cfg.bos_token_id is None else cfg.bos_token_id
    decodable = cast(Seq2SeqLM, model)  # (a SEQ2SEQ family)
    limit = decodable.config.max_target_len if cfg.max_new_tokens is None else cfg.max_new_tokens
    cfg = cfg.replace(eos_token_id=eos)  # (beam search and the decoding loop read the end token from the config)
    src_ids = src_ids.to(model_device(model))  # sources, states and sampling follow the model's device
    start = torch.full((src_ids.shape[0], 1), bos, dtype=torch.long, device=src_ids.device)
    check_ids_fit(start, limit, cfg)
    controls = cfg.logits_controls(eos, extra_suppressed=(PAD_ID, bos, UNK_ID))  # never text: never written
    controls.check_context(limit + 1)
    stops = stopping(cfg.stopping_criteria, cfg.max_time)
    if limit == 0:  # nothing to add: as many empty rows as the strategy would return
        empty = start.new_zeros((start.shape[0] * cfg.num_return_sequences, 0))
        return GenerateOutput(empty, ()) if return_dict else empty
    with decoding_mode(model):
        if cfg.strategy == "beam":
            stepper = Seq2SeqStepper(decodable, src_ids.repeat_interleave(cfg.num_beams, dim=0))
            out = beam_search(stepper, start, limit, cfg, controls, stops, keep_scores=return_dict)
        else:
            n = cfg.num_return_sequences
            stepper = Seq2SeqStepper(decodable, src_ids.repeat_interleave(n, dim=0))
            out = decode_loop(
                stepper, start.repeat_interleave(n, dim=0), limit, cfg, controls, stops, keep_scores=return_dict
            )
    out.sequences = cast(Tensor, out.sequences)[:, 1:]
    return out if return_dict else out.sequences


@torch.no_grad()
def cross_attention(
    model: torch.nn.Module, src_ids: Tensor, out_ids: Tensor, *, bos_token_id: int = BOS_ID
) -> tuple[Tensor, ...]:
    """Where each output token looked, per decoder layer: ``(batch, heads, out_len, src_len)`` weights each (an RNN
    decoder has one layer and one head).

    ``out_ids (batch, out_len)`` is what :func:`translate` returned; the decoder is run once more with those tokens
    as its inputs (teacher forcing), which gives exactly the weights it used while decoding them.
    """
    device = model_device(model)
    src_ids, out_ids = src_ids.to(device), out_ids.to(device)
    start = torch.full((out_ids.shape[0], 1), bos_token_id, dtype=torch.long, device=device)
    with decoding_mode(model):
        output = model(src_ids, torch.cat([start, out_ids[:, :-1]], dim=1), return_attention=True)
    if not output.cross_attentions:
        raise ConfigError(NO_ALIGNMENT)
    return tuple(w.float() for w in output.cross_attentions)


def alignment(model: torch.nn.Module, src_ids: Tensor, out_ids: Tensor, *, bos_token_id: int = BOS_ID) -> Tensor:
    """Where each output token looked: ``(batch, out_len, src_len)`` weights of the last decoder layer, mean of heads
    (see :func:`cross_attention`)."""
    return cross_attention(model, src_ids, out_ids, bos_token_id=bos_token_id)[-1].mean(dim=1)
