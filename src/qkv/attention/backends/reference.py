"""The reference backend: materialise scores and weights, exactly as the texts write attention down.

softmax(score_mod(score(Q, K) · scale + bias), masked) · V, computed in fp32. It is the oracle of the test suite and the
source of weights for visualisation; memory is O(q_len × k_len).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from qkv.attention.call import AttentionCall, repeat_kv
from qkv.attention.mods import evaluate_score
from qkv.attention.softmax import compute_dtype, safe_softmax

__all__ = ["reference_attention", "reference_scores", "reference_weights"]


def _unmasked_scores(call: AttentionCall) -> Tensor:
    dtype = compute_dtype(call.q.dtype)
    q = call.q.to(dtype)
    k = repeat_kv(call.k, call.group).to(dtype)
    scores = call.score(q, k) * call.scale
    if call.bias is not None:
        scores = scores + call.bias.to(dtype)
    if call.score_mod is not None:
        scores = evaluate_score(call.score_mod, scores, call.grid())
    return scores


def reference_scores(call: AttentionCall) -> Tensor:
    """The softmax's input ``(batch, heads, q_len, k_len)`` in fp32: ``score(q, k) · scale + bias``, ``-inf`` where
    the mask, the causal rule or the window forbids the key."""
    mask = call.dense_mask()
    scores = _unmasked_scores(call)
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


def reference_weights(call: AttentionCall) -> Tensor:
    """Attention weights ``(batch, heads, q_len, k_len)`` in fp32, before dropout."""
    return safe_softmax(_unmasked_scores(call), call.dense_mask())


def reference_attention(call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """Returns ``out (batch, heads, q_len, v_dim)`` in the input dtype and the weights when asked for."""
    weights = reference_weights(call)
    applied = F.dropout(weights, p=call.dropout) if call.dropout > 0 else weights
    out = applied @ repeat_kv(call.v, call.group).to(applied.dtype)
    return out.to(call.q.dtype), (weights.to(call.q.dtype) if call.return_weights else None)
