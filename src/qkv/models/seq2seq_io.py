"""Input checks both sequence-to-sequence models share (source padding, id ranges)."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.errors import ShapeError, describe_shape
from qkv.special_tokens import PAD_ID

__all__ = ["check_ids", "source_keep"]


def check_ids(name: str, ids: Tensor, vocab_size: int) -> None:
    """ShapeError unless ``ids`` is an integer ``(batch, seq)`` tensor with values in ``[0, vocab_size)``."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        got = f"{ids.dtype} {describe_shape(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ShapeError(f"{name} must be an integer tensor (batch, seq), got {got}")
    if ids.numel():
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= vocab_size:
            raise ShapeError(f"{name} must hold ids in [0, {vocab_size}), got {low if low < 0 else high}")


def source_keep(src_ids: Tensor, vocab_size: int) -> Tensor:
    """``(batch, src_len)`` bool, True = a real source token; every row needs at least one."""
    check_ids("src_ids", src_ids, vocab_size)
    keep = src_ids != PAD_ID
    if src_ids.shape[1] == 0 or not bool(keep.any(dim=1).all()):
        raise ShapeError(
            "every source row needs at least one real (non-padding) token; an empty source cannot be encoded"
        )
    return keep
