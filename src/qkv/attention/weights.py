"""Attention weights alone, recomputed exactly from Q and K (for inspection: capture, visualisation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from qkv.attention.backends import MATERIALISE_LIMIT
from qkv.attention.backends.chunked import chunked_weights
from qkv.attention.backends.reference import reference_scores, reference_weights
from qkv.attention.block_masks import BlockMask
from qkv.attention.call import AttentionCall, build_call, mask_function, repeat_kv
from qkv.attention.masks import Window
from qkv.attention.mods import MaskMod, ScoreMod
from qkv.attention.scores import ScoreFunction
from qkv.errors import ConfigError

__all__ = ["attention_scores", "attention_weights"]


@torch.no_grad()
def attention_weights(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: Window | None = None,
    bias: Tensor | None = None,
    score: str | ScoreFunction = "scaled_dot",
    scale: float | None = None,
    heads: Sequence[int] | None = None,
    mask_mod: MaskMod | None = None,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
) -> Tensor:
    """The weights :func:`qkv.attend` uses, ``(batch, len(heads), q_len, k_len)`` in fp32, without computing outputs.

    ``q (batch, heads, q_len, d)`` and ``k (batch, kv_heads, k_len, d)`` and the masking arguments as for
    ``attend``; ``heads`` picks query heads (default: all). Long inputs are recomputed tile by tile (the chunked
    backend), short ones materialised.
    """
    call = _weights_call(q, k, mask, causal, window, bias, score, scale, heads, mask_mod, score_mod, block_mask)
    if call.q_len * call.k_len > MATERIALISE_LIMIT:
        return chunked_weights(call).float()
    return reference_weights(call).float()


@torch.no_grad()
def attention_scores(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: Window | None = None,
    bias: Tensor | None = None,
    score: str | ScoreFunction = "scaled_dot",
    scale: float | None = None,
    heads: Sequence[int] | None = None,
    mask_mod: MaskMod | None = None,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
) -> Tensor:
    """What :func:`qkv.attend`'s softmax receives, ``(batch, len(heads), q_len, k_len)`` in fp32: the score times
    the scale plus the bias, and ``-inf`` at every key the mask, the causal rule or the window forbids.

    Arguments as for :func:`attention_weights`; always materialised (meant for inspecting short inputs).
    """
    call = _weights_call(q, k, mask, causal, window, bias, score, scale, heads, mask_mod, score_mod, block_mask)
    return reference_scores(call).float()


def _weights_call(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None,
    causal: bool,
    window: Window | None,
    bias: Tensor | None,
    score: str | ScoreFunction,
    scale: float | None,
    heads: Sequence[int] | None,
    mask_mod: MaskMod | None,
    score_mod: ScoreMod | None,
    block_mask: BlockMask | None,
) -> AttentionCall:
    """The validated call for the weights or scores of ``heads`` (all by default); keys stand in for the values."""
    # a block mask's function, not its tiles: they were made for all heads, and the weights of some are smaller
    mask_mod = mask_function(mask_mod, block_mask)
    if heads is not None:
        selected = list(heads)
        if not selected or min(selected) < 0 or max(selected) >= q.shape[1]:
            raise ConfigError(f"heads must be indices in [0, {q.shape[1]}), got {selected}")
        group = q.shape[1] // max(k.shape[1], 1)
        index = torch.tensor(selected, device=q.device)
        q = q.index_select(1, index)
        k = repeat_kv(k, group).index_select(1, index) if k.shape[1] else k
        if mask is not None and mask.dim() == 4 and mask.shape[1] > 1:
            mask = mask.index_select(1, index)
        if bias is not None and bias.dim() == 4 and bias.shape[1] > 1:
            bias = bias.index_select(1, index)
        # the functions see the model's head numbers, not positions in the selection
        mask_mod = _on_heads(mask_mod, index, lambda f, b, h, q, kv: f(b, index[h], q, kv))
        score_mod = _on_heads(score_mod, index, lambda f, s, b, h, q, kv: f(s, b, index[h], q, kv))
    # the values are not needed for weights: the keys stand in for them (same batch, heads and length)
    return build_call(
        q, k, k, mask, causal=causal, window=window, bias=bias, score=score, scale=scale, dropout=0.0,
        return_weights=True, mask_mod=mask_mod, score_mod=score_mod,
    )  # fmt: skip


def _on_heads(fn: Any, index: Tensor, call: Any) -> Any:
    """``fn`` called with head numbers mapped through ``index`` (None stays None)."""
    if fn is None:
        return None

    def on_selected_heads(*args: Tensor) -> Tensor:
        return call(fn, *args)

    return on_selected_heads
