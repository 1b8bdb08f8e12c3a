"""``qkv.attend``: the one function every attention in qkv goes through."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.attention.backends import run_backend
from qkv.attention.block_masks import BlockMask
from qkv.attention.call import AttentionCall, build_call
from qkv.attention.masks import Window
from qkv.attention.mods import MaskMod, ScoreMod
from qkv.attention.scores import ScoreFunction

__all__ = ["attend"]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: Window | None = None,
    bias: Tensor | None = None,
    score: str | ScoreFunction = "scaled_dot",
    scale: float | None = None,
    dropout: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
    mask_mod: MaskMod | None = None,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention: ``softmax(score_mod(score(q, k) · scale + bias), masked) · v``.

    Args:
        q: queries ``(batch, heads, q_len, q_dim)``.
        k: keys ``(batch, kv_heads, k_len, k_dim)``; ``heads`` must be a multiple of ``kv_heads`` (grouped-query
            attention: query head ``h`` uses key/value head ``h // (heads // kv_heads)``).
        v: values ``(batch, kv_heads, k_len, v_dim)``.
        mask: bool, broadcastable to ``(batch, heads, q_len, k_len)``; **True = may attend**.
        causal: query ``i`` sees keys up to its own position, aligned to the *end* of the keys (``q_len < k_len``
            is a query block appended after cached keys). Exactly ``mask_mod=mods.causal()``, on a fast path.
        window: local attention, exactly ``mask_mod=mods.sliding_window(window)`` on a fast path: an int ``w`` is
            the number of keys a query sees, itself included and counting back (Mistral's ``sliding_window``);
            ``(left, right)`` the keys seen on each side besides itself (:mod:`qkv.attention.masks` says it once).
        bias: float, broadcastable like ``mask``, added to the scaled scores (ALiBi, relative positions, ...).
        score: a registered score name (``dot``, ``scaled_dot``, ``cosine``, or your own parameter-free one) or a
            :class:`~qkv.attention.scores.ScoreFunction` module (needed for ``general``, ``additive``, ``location``).
        scale: multiplies the scores; ``None`` uses the score's default (``1/sqrt(q_dim)`` for ``scaled_dot``, else 1).
        dropout: probability of dropping an attention weight (pass 0 at evaluation time).
        backend: ``"reference"``, ``"chunked"``, ``"fused"``, ``"flex"`` or ``"auto"`` (see :func:`choose_backend`).
        return_weights: also return the weights ``(batch, heads, q_len, k_len)`` (before dropout). Only the
            reference backend lets gradients flow through them; the others recompute them for inspection.
        mask_mod: ``(b, h, q_idx, kv_idx) -> bool`` (True = may attend), ANDed with the other masks. The chunked
            backend skips tiles the function leaves empty.
        score_mod: ``(score, b, h, q_idx, kv_idx) -> score``, applied to the scaled (and biased) scores before
            masking; ALiBi, soft-capping, T5's bias (:mod:`qkv.attention.mods`). Parameters of a module, and
            tensors a function closes over, get gradients.
        block_mask: a :class:`~qkv.attention.block_masks.BlockMask` made once by :func:`qkv.attention.block_mask`
            from a mask function, reused across layers and steps (FlexAttention's argument); instead of
            ``mask_mod``.

    Returns:
        ``(out, weights)``: ``out`` is ``(batch, heads, q_len, v_dim)`` in the dtype of ``q``; ``weights`` is None
        unless asked for. A query with no allowed key gets an all-zero output and weight row, never NaN.

    Raises:
        qkv.errors.ShapeError: q, k, v, mask or bias of shapes that do not fit together.
        qkv.errors.DTypeError: q, k, v not floating point or not of one dtype.
        qkv.errors.MaskError: a mask that is not bool, or a bias that is not float.
        qkv.errors.ConfigError: a bad causal, window, scale, dropout or mask/score function.
        qkv.errors.UnknownNameError: an unknown score or backend name.
        qkv.errors.BackendUnsupportedError: a backend that cannot run this call.
    """
    call = build_call(
        q,
        k,
        v,
        mask,
        causal=causal,
        window=window,
        bias=bias,
        score=score,
        scale=scale,
        dropout=dropout,
        return_weights=return_weights,
        mask_mod=mask_mod,
        score_mod=score_mod,
        block_mask=block_mask,
    )
    if 0 in (call.batch, call.heads, call.q_len, call.k_len):
        return _empty_result(call)
    return run_backend(backend, call)


def _empty_result(call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """Zero-size inputs: no key means every row is fully masked, so the output is zeros (still in the graph)."""
    link = (call.q.sum() + call.k.sum() + call.v.sum()) * 0  # keeps requires_grad and gives zero gradients
    out = torch.zeros(call.batch, call.heads, call.q_len, call.v.shape[-1], dtype=call.q.dtype, device=call.q.device)
    weights = None
    if call.return_weights:
        weights = call.q.new_zeros(call.batch, call.heads, call.q_len, call.k_len)
    return out + link, weights
