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
from qkv.attention.call import build_call, repeat_kv
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
    window: int | tuple[int, int] | None = None,
    bias: Tensor | None = None,
    score: str | ScoreFunction = "scaled_dot",
    scale: float | None = None,
    heads: Sequence[int] | None = None,
    mask_mod: MaskMod | BlockMask | None = None,
    score_mod: ScoreMod | None = None,
) -> Tensor:
    """The weights :func:`qkv.attend` uses, ``(batch, len(heads), q_len, k_len)`` in fp32, without computing outputs.

    ``q (batch, heads, q_len, d)`` and ``k (batch, kv_heads, k_len, d)`` as for ``attend``; ``heads`` picks query
    heads (default: all). Long inputs are recomputed tile by tile (the chunked backend), short ones materialised.
    """
    call = _weights_call(q, k, mask, causal, window, bias, score, scale, heads, mask_mod, score_mod)
    if call.q_len * call.k_len > MATERIALISE_LIMIT:
        return chunked_weights(call).float()
    return reference_weights(call).float()


@torch.no_grad()
def attention_scores(q: Tensor, k: Tensor, mask: Tensor | None = None, **options: Any) -> Tensor:
    """What :func:`qkv.attend`'s softmax receives, ``(batch, len(heads), q_len, k_len)`` in fp32: the score times
    the scale plus the bias, and ``-inf`` at every key the mask, the causal rule or the window forbids.

    Arguments (``causal``, ``window``, ``bias``, ``score``, ``scale``, ``heads``, ``mask_mod``, ``score_mod``) as
    for :func:`attention_weights`;
    always materialised (meant for inspecting short inputs).
    """
    options = {
        "causal": False,
        "window": None,
        "bias": None,
        "score": "scaled_dot",
        "scale": None,
        "heads": None,
        "mask_mod": None,
        "score_mod": None,
        **options,
    }
    return reference_scores(_weights_call(q, k, mask, **options)).float()


def _weights_call(q, k, mask, causal, window, bias, score, scale, heads, mask_mod, score_mod):  # noqa: ANN001, ANN202
    """The validated call for the weights or scores of ``heads`` (all by default); keys stand in for the values."""
    if isinstance(mask_mod, BlockMask):
        mask_mod = mask_mod.mask_mod  # (made for all heads; the weights of some heads are another shape)
    if heads is not None:
        heads = list(heads)
        if not heads or min(heads) < 0 or max(heads) >= q.shape[1]:
            raise ConfigError(f"heads must be indices in [0, {q.shape[1]}), got {heads}")
        group = q.shape[1] // max(k.shape[1], 1)
        index = torch.tensor(heads, device=q.device)
        q = q.index_select(1, index)
        k = repeat_kv(k, group).index_select(1, index) if k.shape[1] else k
        if mask is not None and mask.dim() == 4 and mask.shape[1] > 1:
            mask = mask.index_select(1, index)
        if bias is not None and bias.dim() == 4 and bias.shape[1] > 1:
            bias = bias.index_select(1, index)
        # the functions see the model's head numbers, not positions in the selection
        mask_mod = _on_heads(mask_mod, index, lambda f, b, h, q, kv: f(b, index[h], q, kv))
        score_mod = _on_heads(score_mod, index, lambda f, s, b, h, q, kv: f(s, b, index[h], q, kv))
    options = {
        "causal": causal,
        "window": window,
        "bias": bias,
        "score": score,
        "scale": scale,
        "mask_mod": mask_mod,
        "score_mod": score_mod,
    }
    # the values are not needed for weights: the keys stand in for them (same batch, heads and length)
    return build_call(q, k, k, mask, dropout=0.0, return_weights=True, **options)


def _on_heads(fn: Any, index: Tensor, call: Any) -> Any:  # noqa: ANN401
    """``fn`` called with head numbers mapped through ``index`` (None stays None)."""
    if fn is None:
        return None

    def on_selected_heads(*args: Tensor) -> Tensor:
        return call(fn, *args)

    return on_selected_heads
