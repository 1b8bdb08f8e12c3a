"""The fused backend: ``torch.nn.functional.scaled_dot_product_attention`` wherever its semantics match ours.

It serves every score that is a dot product after transforming q and k (``dot``, ``scaled_dot``, ``cosine``,
``general``); the transform runs first and SDPA does the rest. Our conventions are mapped here, in one place:

* causal is aligned to the end of the keys; SDPA's ``is_causal`` is aligned to the start, so it is used only when
  ``q_len == k_len`` and otherwise the mask is passed explicitly;
* a bool mask keeps PyTorch's polarity (True = may attend), a bias becomes a float mask with ``-inf`` where masked;
* rows with no allowed key are given one dummy key and their output is zeroed afterwards, so no PyTorch version or
  kernel can produce NaN for them;
* ``mods.causal(strict=True)`` (keys strictly before the query) is SDPA's causal kernel on queries ``1..n-1`` and
  keys ``0..n-2``, the first query's row zero: no dense mask, and the kernel skips the masked half;
* bf16 on the CPU runs the kernel in fp32 where that is faster (a backward to follow, one query): :func:`_sdpa`;
* weights, when asked for, are recomputed by the reference softmax (SDPA never returns them).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.attention.backends.reference import reference_weights
from qkv.attention.call import AttentionCall, repeat_kv
from qkv.attention.frozen import BF16_PACKS
from qkv.attention.masks import Span
from qkv.attention.mods import evaluate_mask, index_grid, is_additive, is_strictly_causal

__all__ = ["fused_attention", "fused_unsupported_reason"]

_CAUSAL = Span(None, 0)
#: the most elements of a dense mask or bias made from a mask/score function for SDPA (16 MiB of fp32)
DENSE_MOD_LIMIT = 1 << 22
# enable_gqa arrived in torch 2.5; on older releases k and v are repeated per head instead.
_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def fused_unsupported_reason(call: AttentionCall) -> str | None:
    """Why SDPA cannot compute this call exactly, or None when it can."""
    if not call.is_dot_product:
        return f"score {call.score.extra_name()!r} is not a dot product of (transformed) q and k"
    if call.score_mod is not None and not is_additive(call.score_mod):
        return "its score_mod is not additive (SDPA applies no function to the scores)"
    if (call.mask_mod is not None and not _strictly_causal(call)) or call.score_mod is not None:
        size = _dense_mod_size(call)
        if size > DENSE_MOD_LIMIT:
            return f"its mask/score function would need a dense tensor of {size:,} elements"
    return None


def _dense_mod_size(call: AttentionCall) -> int:
    """Elements of the dense mask/bias the call's functions make: probe which of batch and head they read."""
    probe = index_grid(call.batch, call.heads, call.q_len, call.k_len, call.q.device, rows=(0, 1), cols=(0, 1))
    batch, heads = 1, 1
    if call.mask_mod is not None:
        shape = evaluate_mask(call.mask_mod, probe).shape
        batch, heads = max(batch, shape[0]), max(heads, shape[1])
    if call.score_mod is not None:
        shape = call.score_mod(call.q.new_zeros(1, 1, 1, 1), probe.b, probe.h, probe.q, probe.kv).shape
        batch, heads = max(batch, shape[0]), max(heads, shape[1])
    return batch * heads * call.q_len * call.k_len


def _no_mask_tensors(call: AttentionCall) -> bool:
    """No bool mask, no bias and no score function: only the span and the mask function decide."""
    return call.mask is None and call.bias is None and call.score_mod is None


def _strictly_causal(call: AttentionCall) -> bool:
    """Whether the call's only mask is ``mods.causal(strict=True)`` (``causal=True`` besides it changes nothing),
    over as many queries as keys, two or more (one query sees nothing: the general path's empty row): the shifted
    causal kernel computes it exactly."""
    return (
        is_strictly_causal(call.mask_mod)
        and _no_mask_tensors(call)
        and (call.span.unbounded or call.span == _CAUSAL)
        and call.q_len == call.k_len >= 2
    )


def _sdpa_mask(call: AttentionCall) -> tuple[Tensor | None, bool, Tensor | None]:
    """Returns ``(attn_mask, is_causal, empty_rows)`` in SDPA's terms; ``empty_rows`` marks rows to zero."""
    if (
        _no_mask_tensors(call)
        and call.mask_mod is None
        and (call.span.unbounded or (call.span == _CAUSAL and call.q_len == call.k_len))
    ):
        return None, not call.span.unbounded, None
    allowed = call.dense_mask()
    bias = call.dense_bias()
    if bias is None:
        assert allowed is not None
        attn_mask: Tensor = allowed
    else:
        attn_mask = bias.to(call.q.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    visible = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
    empty_rows = ~visible.any(dim=-1, keepdim=True)  # (.., q_len, 1)
    # Give each empty row key 0 so the kernel has something to normalise over; its output is zeroed below. Done
    # whether or not a row is empty: asking would read a value back to the host on every attention call.
    first_key = torch.zeros_like(visible)
    first_key[..., 0] = True
    fix = empty_rows & first_key
    attn_mask = attn_mask | fix if attn_mask.dtype == torch.bool else attn_mask.masked_fill(fix, 0.0)
    return attn_mask, False, empty_rows


def _sdpa(q, k, v, attn_mask, dropout, is_causal, scale, kwargs) -> Tensor:  # noqa: ANN001
    """``F.scaled_dot_product_attention``; on the CPU, half-precision inputs run in fp32 unless
    :func:`_native_bf16_pays`.

    PyTorch's CPU flash-attention kernels are several times slower in bf16/fp16 than in fp32 where a backward
    follows (7.0 vs 2.4 ms forward+backward at the baby GPT's shapes on an AVX512-BF16 CPU) and for one query (a
    decoding step), so there the kernel runs in fp32 and its output returns to the input dtype; the result is at
    least as accurate. Autocast, where on, is paused for the call, as it would cast the inputs straight back.
    """
    half = q.dtype in (torch.bfloat16, torch.float16)
    if not (half and q.device.type == "cpu") or _native_bf16_pays(q, k, v):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=scale, **kwargs
        )
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.float()
    # (entering an autocast context costs ~9 us: a decoding step's every layer would pay it for nothing)
    paused = torch.autocast(device_type="cpu", enabled=False) if torch.is_autocast_enabled("cpu") else nullcontext()
    with paused:
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal,
            scale=scale, **kwargs,
        )  # fmt: skip
    return out.to(q.dtype)


def _native_bf16_pays(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether CPU bf16 attention runs faster in bf16 than converted to fp32: without a backward to follow, for two
    or more queries, where oneDNN has bf16 kernels.

    Measured on a 2-core AMD EPYC with AVX512-BF16 (forward only, 2 threads), fp32's time (conversions included)
    over bf16's was 1.3-1.6x for 2-16 queries over 160 keys (a prompt, a speculative check), 1.3-2.0x for causal
    prompts of 8-16 tokens, 1.4-3.0x at MiniLM's shapes (8-256 sentences of 8-64 tokens, head dim 32, padding
    mask); one query (a decoding step) ran 0.35-0.5x over 64-256 keys, 0.25-0.5x with grouped heads or a padding
    mask, so it stays in fp32.
    """
    return (
        q.dtype == torch.bfloat16
        and BF16_PACKS
        and q.shape[-2] > 1
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    )


def fused_attention(call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """Returns ``out (batch, heads, q_len, v_dim)`` and, when asked for, recomputed weights."""
    pair = call.score.as_dot_product(call.q, call.k)
    assert pair is not None, fused_unsupported_reason(call)
    q, k = pair
    v = call.v
    kwargs = {}
    if call.group > 1:
        if _HAS_ENABLE_GQA:
            kwargs["enable_gqa"] = True
        else:  # pragma: no cover - torch < 2.5
            k, v = repeat_kv(k, call.group), repeat_kv(v, call.group)
    if _strictly_causal(call):
        # query i sees keys 0..i-1: query i against key j is row i-1, column j of a causal attention of queries
        # 1..n-1 over keys 0..n-2; query 0 sees nothing (zeros, as an empty row gets everywhere in qkv)
        rest = _sdpa(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1], None, call.dropout, True, call.scale, kwargs)
        out = torch.cat([rest.new_zeros(rest.shape[0], rest.shape[1], 1, rest.shape[3]), rest], dim=2)
    else:
        attn_mask, is_causal, empty_rows = _sdpa_mask(call)
        out = _sdpa(q, k, v, attn_mask, call.dropout, is_causal, call.scale, kwargs)
        if empty_rows is not None:
            out = out.masked_fill(empty_rows, 0.0)
    weights = None
    if call.return_weights:
        with torch.no_grad():
            weights = reference_weights(call).to(call.q.dtype)
    return out, weights
