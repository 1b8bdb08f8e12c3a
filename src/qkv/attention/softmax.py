"""A softmax that never returns NaN.

Scores are taken to fp32, disallowed entries are excluded exactly (weight 0), and a row where no key is allowed
(fully masked, or every score ``-inf``) returns all zeros, in the forward and in the backward pass.

We exclude entries with ``-inf`` and guard the row maximum rather than filling with ``finfo.min``: the result is the
same for allowed entries, and it stays NaN-free when a user's additive bias already holds ``-inf``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compute_dtype", "finite_row_max", "safe_softmax"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention arithmetic runs in: fp32 for half types, fp64 stays fp64 (for gradcheck and oracles)."""
    return torch.promote_types(dtype, torch.float32)


def finite_row_max(scores: Tensor) -> Tensor:
    """Row maximum over the last dim (keepdim), with ``-inf`` rows replaced by 0 so that ``scores - max`` is safe."""
    row_max = scores.amax(dim=-1, keepdim=True)
    return torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)


def safe_softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax over the last dim in fp32.

    Args:
        scores: ``(..., q_len, k_len)`` logits of any float dtype.
        mask: bool, broadcastable to ``scores``; True = may attend.

    Returns:
        weights in fp32 (fp64 for fp64 input) of the broadcast shape; rows with no allowed key are all zeros.
    """
    logits = scores.to(compute_dtype(scores.dtype))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    # softmax is shift-invariant, so the max needs no gradient (detaching also avoids rounding noise in backward)
    shifted = logits - finite_row_max(logits).detach()
    exp = torch.exp(shifted)
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, torch.ones_like(total))
