"""Matrix products of attention tiles, shared by the chunked backend's forward and backward passes.

Tiles are 5-D, ``(batch, kv_heads, group, rows, cols)``: keys and values carry a group dim of 1 that queries
broadcast against (grouped-query attention without copying keys per head).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TileBuffer", "matmul_minus", "sum_group", "tile_matmul"]


class TileBuffer:
    """One tile's worth of memory, reused by every tile of a call: a fresh multi-megabyte tensor per tile costs the
    allocator (and the kernel's page faults) more than the elementwise passes over it."""

    def __init__(self) -> None:
        self.flat: Tensor | None = None

    def take(self, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        """A contiguous ``shape`` tensor of ``like``'s dtype and device (contents undefined)."""
        numel = math.prod(shape)
        if self.flat is None or self.flat.numel() < numel:
            self.flat = like.new_empty(numel)
        return self.flat[:numel].view(shape)


def tile_matmul(a: Tensor, b: Tensor, buffer: TileBuffer | None = None) -> Tensor:
    """``a @ b`` for tiles ``(batch, kv_heads, g, m, k) @ (batch, kv_heads, g | 1, k, n)``: one 3-D ``bmm`` over views
    where the group dims match (matmul's 5-D route measured ~1.5x slower for 8 x 256 x 64 x 256 score tiles on a
    CPU), written into ``buffer`` when given; broadcasting over the group otherwise."""
    if a.shape[2] != b.shape[2]:
        return a @ b
    shape = (*a.shape[:-1], b.shape[-1])
    a3, b3 = a.reshape(-1, a.shape[-2], a.shape[-1]), b.reshape(-1, b.shape[-2], b.shape[-1])
    if buffer is None:
        return torch.bmm(a3, b3).view(shape)
    out = buffer.take(a, shape)
    torch.bmm(a3, b3, out=out.view(-1, shape[-2], shape[-1]))
    return out


def matmul_minus(a: Tensor, b: Tensor, shift: Tensor, buffer: TileBuffer) -> Tensor:
    """``a bᵀ - shift``: ``a (batch, kv_heads, group, tq, d)``, ``b (batch, kv_heads, 1, tk, d)``,
    ``shift (batch, kv_heads, group, tq)`` -> ``(batch, kv_heads, group, tq, tk)``. (``baddbmm`` would fold the
    subtraction into the GEMM, but it first copies the broadcast shift into the output, which costs more on a CPU
    than the in-place subtraction after it.)"""
    return tile_matmul(a, b.transpose(-2, -1), buffer).sub_(shift.unsqueeze(-1))


def sum_group(t: Tensor) -> Tensor:
    """Sum per-query-head key/value gradients ``(b, kvh, g, n, d)`` over the group (no copy when g = 1)."""
    return t if t.shape[2] == 1 else t.sum(dim=2, keepdim=True)
