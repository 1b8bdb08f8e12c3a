"""How the explorer stores the numbers it draws: exact where that fits, and says so where it does not.

Weights, scores and the neuron view's vectors travel as little-endian float32 arrays, base64-encoded inside the page's
JSON, so every value the page shows (and every value a hover reads out) is the float32 the model computed, bit for
bit. The size rule, per kind of attention (self, cross, ...):

* up to ``FLOAT32_LIMIT`` weights (4 Mi: all 12 layers × 12 heads of a 170-token input, or 6 × 12 at 240 tokens):
  float32, exact;
* up to ``FLOAT16_LIMIT`` (8 Mi, the same 16 MiB): float16, the largest rounding error measured here and stated on
  the view;
* beyond: each query row keeps its ``top_k`` largest weights, in float32; the view says so.

Scores (the softmax's input) are kept only while the weights are float32, and the neuron view's vectors only up to
``VECTOR_LIMIT`` tokens.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FLOAT16_LIMIT", "FLOAT32_LIMIT", "TOP_K", "VECTOR_LIMIT", "encode_array", "encode_weights"]

FLOAT32_LIMIT = 1 << 22
FLOAT16_LIMIT = 1 << 23
TOP_K = 8
VECTOR_LIMIT = 128  # tokens: q, k, v and z of every head for the neuron view


def encode_array(values: Tensor, dtype: torch.dtype = torch.float32) -> str:
    """``values`` (any shape; read in row-major order) as base64 of little-endian ``dtype`` (float32, float16 or
    int32)."""
    array = values.detach().to("cpu", dtype).contiguous().numpy()
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def encode_weights(weights: Sequence[Tensor], top_k: int = TOP_K) -> dict[str, Any]:
    """Per layer ``(heads, q, k)`` -> the page's ``weights`` entry: ``{"encoding": "float32" | "float16", "data":
    base64 of (layers, heads, q, k)}`` (float16 with ``"maxError"``, the largest absolute rounding error), or
    ``{"encoding": "top-k", "topK": k, "keys": int32, "data": float32}``, both base64 of (layers, heads, q, k) with
    each row's ``k`` largest weights, largest first, and their key indices."""
    total = sum(w.numel() for w in weights)
    if total <= FLOAT16_LIMIT:
        stacked = torch.stack([w.detach().float().cpu() for w in weights])
        if total <= FLOAT32_LIMIT:
            return {"encoding": "float32", "data": encode_array(stacked)}
        half = stacked.half()
        error = float((half.float() - stacked).abs().max())
        return {"encoding": "float16", "data": encode_array(half, torch.float16), "maxError": error}
    tops = [w.detach().float().cpu().topk(min(top_k, w.shape[-1]), dim=-1) for w in weights]
    keys = torch.stack([index for _, index in tops]).to(torch.int32)
    return {"encoding": "top-k", "topK": keys.shape[-1], "keys": encode_array(keys, torch.int32),
            "data": encode_array(torch.stack([values for values, _ in tops]))}  # fmt: skip


def float_list(values: Tensor) -> list:
    """A small tensor as nested lists of Python floats (float64: every float32 exactly; ``-inf`` is not JSON, so
    callers encode arrays that may hold it with :func:`encode_array`)."""
    return np.asarray(values.detach().double().cpu()).tolist()
