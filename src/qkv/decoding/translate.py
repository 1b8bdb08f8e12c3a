"""``qkv.translate``: greedy, beam search or sampling from a sequence-to-sequence model (RNN or Transformer)."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from qkv.decoding.beam import beam_search
from qkv.decoding.controls import LogitsControls
from qkv.decoding.generate import check_decoding_args, check_return_sequences, decode_loop, decoding_mode
from qkv.decoding.stepper import Seq2SeqDecodable, Seq2SeqStepper
from qkv.devices import model_device
from qkv.errors import ConfigError
from qkv.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["alignment", "cross_attention", "translate"]

NO_ALIGNMENT = "this model has no attention (the no-attention baseline): there is no alignment to show"


@torch.no_grad()
def translate(
    model: torch.nn.Module,
    src_ids: Tensor,
    max_new_tokens: int | None = None,
    strategy: str = "greedy",
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    bos_token_id: int = BOS_ID,
    eos_token_id: int = EOS_ID,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    num_return_sequences: int = 1,
) -> Tensor:
    """Target ids ``(batch, n)`` for sources ``src_ids (batch, src_len)`` (0 = padding).

    The source is encoded once; the decoder starts from ``<s>`` and stops at ``</s>`` or after ``max_new_tokens``
    (default: the model's ``max_target_len``). Rows are returned without ``<s>``, and a row that ended early is
    filled with ``</s>``. ``strategy`` and its options, the controls (``repetition_penalty``,
    ``no_repeat_ngram_size``, ``min_new_tokens``: on the output tokens) and ``num_return_sequences`` (``(batch * n,
    len)``) are those of :func:`qkv.generate`; :func:`qkv.score_translation` scores the outputs.
    """
    limit = int(model.config.max_target_len) if max_new_tokens is None else max_new_tokens  # type: ignore[union-attr]
    src_ids = src_ids.to(model_device(model))  # sources, states and sampling follow the model's device
    start = torch.full((src_ids.shape[0], 1), bos_token_id, dtype=torch.long, device=src_ids.device)
    check_decoding_args(start, limit, strategy, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams)
    check_return_sequences(num_return_sequences, strategy, num_beams)
    controls = LogitsControls(
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens,
        eos_token_id=eos_token_id,
        suppress_tokens=(PAD_ID, bos_token_id, UNK_ID),  # never text: a translation never writes them
    )
    controls.check_context(limit + 1)
    with decoding_mode(model):
        if strategy == "beam":
            stepper = Seq2SeqStepper(cast(Seq2SeqDecodable, model), src_ids.repeat_interleave(num_beams, dim=0))
            ids = beam_search(
                stepper, start, limit, num_beams, length_penalty, eos_token_id, controls, None, num_return_sequences
            )
        else:
            rows = src_ids.repeat_interleave(num_return_sequences, dim=0)
            stepper = Seq2SeqStepper(cast(Seq2SeqDecodable, model), rows)
            start = start.repeat_interleave(num_return_sequences, dim=0)
            ids = decode_loop(stepper, start, limit, strategy, temperature, top_k, top_p, seed, eos_token_id, controls)
    return ids[:, 1:]


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
