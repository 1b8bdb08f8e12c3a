"""The flex backend: hands a call's mask and score functions to PyTorch's compiled FlexAttention.

qkv's mask/score functions have FlexAttention's signatures, so they pass through; what qkv expresses otherwise is
turned into functions here: a bool ``mask`` and a float ``bias`` are read at the indices, the causal/window span
becomes a mask function, and query indices are shifted to qkv's end-aligned positions when ``q_len < k_len``.

FlexAttention runs only compiled, and on a CPU it has no backward pass (pytorch#148752): there this backend serves
inference, and :func:`flex_unsupported_reason` says so when gradients are wanted (use ``chunked``, which has one).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch import Tensor
from torch.torch_version import TorchVersion

from qkv.attention.backends.reference import reference_weights
from qkv.attention.block_masks import BlockMask
from qkv.attention.call import AttentionCall
from qkv.attention.mods import MaskMod, ScoreMod

__all__ = ["flex_attention_backend", "flex_unsupported_reason"]

# FlexAttention's own block masks, made once per qkv BlockMask (they are as reusable as ours)
_flex_masks: weakref.WeakKeyDictionary[BlockMask, Any] = weakref.WeakKeyDictionary()


@functools.cache
def _flex() -> tuple[Any, Any] | None:
    """``(compiled flex_attention, create_block_mask)``, or None where this torch has no FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:  # pragma: no cover - torch < 2.5
        return None
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def flex_unsupported_reason(call: AttentionCall) -> str | None:
    """Why FlexAttention cannot compute this call, or None when it can."""
    if _flex() is None:  # pragma: no cover - torch < 2.5
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (it arrived in 2.5)"
    if not call.is_dot_product:
        return f"score {call.score.extra_name()!r} is not a dot product of (transformed) q and k"
    if call.dropout > 0:
        return "FlexAttention has no attention dropout"
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (call.q, call.k, call.v, call.bias)
    )
    if call.q.device.type == "cpu" and TorchVersion(torch.__version__) < "2.6":
        return f"torch {torch.__version__} compiles FlexAttention for GPUs only (CPUs from torch 2.6); use 'chunked'"
    if call.q.device.type == "cpu" and wants_grad:
        return "FlexAttention has no backward pass on a CPU (pytorch#148752); 'chunked' has one"
    return None


def _combined_mask_mod(call: AttentionCall, offset: int) -> MaskMod | None:
    """One mask function for everything that masks the call, in FlexAttention's query numbering."""
    parts: list[MaskMod] = []
    if call.mask_mod is not None:
        parts.append(call.mask_mod)
    if call.mask is not None:
        dense = call.mask.expand(call.target_shape)
        parts.append(lambda b, h, q, kv: dense[b, h, q - offset, kv])
    span = call.span
    left, right = span.left, span.right  # (bound once: the functions run later)
    if left is not None:
        parts.append(lambda b, h, q, kv: kv >= q - left)
    if right is not None:
        parts.append(lambda b, h, q, kv: kv <= q + right)
    if not parts:
        return None

    def qkv_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_abs = q_idx + offset  # FlexAttention counts queries from 0; qkv aligns them to the end of the keys
        allowed = parts[0](b, h, q_abs, kv_idx)
        for part in parts[1:]:
            allowed = allowed & part(b, h, q_abs, kv_idx)
        return allowed

    return qkv_mask


def _combined_score_mod(call: AttentionCall, offset: int) -> ScoreMod | None:
    if call.bias is None and call.score_mod is None:
        return None
    bias = call.bias.expand(call.target_shape) if call.bias is not None else None
    score_mod = call.score_mod

    def qkv_score(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        if bias is not None:
            score = score + bias[b, h, q_idx, kv_idx].to(score.dtype)
        if score_mod is not None:
            score = score_mod(score, b, h, q_idx + offset, kv_idx)
        return score

    return qkv_score


def _block_mask(call: AttentionCall, mask_mod: MaskMod, create_block_mask: Any) -> Any:
    blocks = call.blocks
    reusable = blocks if blocks is not None and call.mask is None and call.span.unbounded else None
    if reusable is not None and reusable in _flex_masks:
        return _flex_masks[reusable]
    b = blocks.classes.shape[0] if blocks is not None else call.batch
    h = blocks.classes.shape[1] if blocks is not None else call.heads
    flex_mask = create_block_mask(
        mask_mod, b if b > 1 else None, h if h > 1 else None, call.q_len, call.k_len, device=call.q.device
    )
    if reusable is not None:
        _flex_masks[reusable] = flex_mask
    return flex_mask


def flex_attention_backend(call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """Returns ``out (batch, heads, q_len, v_dim)`` and, when asked for, weights from the reference softmax."""
    flex = _flex()
    assert flex is not None
    flex_attention, create_block_mask = flex
    pair = call.score.as_dot_product(call.q, call.k)
    assert pair is not None
    q, k = pair
    offset = call.k_len - call.q_len
    mask_mod = _combined_mask_mod(call, offset)
    block = _block_mask(call, mask_mod, create_block_mask) if mask_mod is not None else None
    out = flex_attention(
        q,
        k,
        call.v,
        score_mod=_combined_score_mod(call, offset),
        block_mask=block,
        scale=call.scale,
        enable_gqa=call.group > 1,
    )
    weights = None
    if call.return_weights:
        with torch.no_grad():
            weights = reference_weights(call).to(call.q.dtype)
    return out, weights
