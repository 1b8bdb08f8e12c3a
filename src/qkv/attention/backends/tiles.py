"""Which tiles of the score matrix attention visits: the causal/window band and block masks, planned in Python.

A tile is queries ``[q0, q1)`` x keys ``[k0, k1)``. :func:`plan_tiles` covers a causal/window band, skipping key
blocks nobody sees and marking only the tiles the band cuts through; :func:`plan_block_tiles` walks a
:class:`~qkv.attention.block_masks.BlockMask`'s grid, dropping empty tiles and marking partial ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.attention.block_masks import EMPTY, FULL, PARTIAL, BlockMask
from qkv.attention.masks import Span

__all__ = ["Tile", "plan_block_tiles", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """Queries ``[q0, q1)`` against keys ``[k0, k1)``; ``masked`` when the causal/window band cuts through it,
    ``partial`` when the mask function must be evaluated on it (the block mask calls it neither empty nor full)."""

    q0: int
    q1: int
    k0: int
    k1: int
    masked: bool
    partial: bool = False


def _split(lo: int, hi: int, block: int, k0: int, k1: int, masked: bool, off: int) -> list[Tile]:
    """Tiles for absolute query positions ``[lo, hi]`` (inclusive), at most ``block`` rows each."""
    return [Tile(t - off, min(t + block, hi + 1) - off, k0, k1, masked) for t in range(lo, hi + 1, block)]


def plan_tiles(q_len: int, k_len: int, span: Span, block_q: int, block_k: int) -> list[Tile]:
    """Cover exactly the (query, key) pairs that ``span`` allows, skipping key blocks nobody sees.

    Query ``i`` has absolute position ``t = i + (k_len - q_len)`` and sees keys ``[t - left, t + right]``. For a
    key block ``[k0, k1)`` the rows that see some of it are ``t ∈ [k0 - right, k1 - 1 + left]``; the rows that see
    all of it are ``t ∈ [k1 - 1 - right, k0 + left]`` and need no mask.
    """
    off = k_len - q_len
    first, last = off, off + q_len - 1
    tiles: list[Tile] = []
    for k0 in range(0, k_len, block_k):
        k1 = min(k0 + block_k, k_len)
        any_lo = first if span.right is None else max(first, k0 - span.right)
        any_hi = last if span.left is None else min(last, k1 - 1 + span.left)
        if any_lo > any_hi:
            continue  # no query sees this block: skipped entirely
        full_lo = any_lo if span.right is None else max(any_lo, k1 - 1 - span.right)
        full_hi = any_hi if span.left is None else min(any_hi, k0 + span.left)
        if full_lo > full_hi:
            tiles += _split(any_lo, any_hi, block_q, k0, k1, True, off)
            continue
        tiles += _split(any_lo, full_lo - 1, block_q, k0, k1, True, off)
        tiles += _split(full_lo, full_hi, block_q, k0, k1, False, off)
        tiles += _split(full_hi + 1, any_hi, block_q, k0, k1, True, off)
    return tiles


def _span_class(span: Span, off: int, q0: int, q1: int, k0: int, k1: int) -> int:
    """EMPTY, PARTIAL or FULL: how the causal/window band covers queries ``[q0, q1)`` x keys ``[k0, k1)``."""
    t0, t1 = q0 + off, q1 - 1 + off  # absolute positions of the first and last query
    left = span.left if span.left is not None else 1 << 62
    right = span.right if span.right is not None else 1 << 62
    if k0 > t1 + right or k1 - 1 < t0 - left:
        return EMPTY
    if k0 >= t1 - left and k1 - 1 <= t0 + right:
        return FULL
    return PARTIAL


def plan_block_tiles(q_len: int, k_len: int, span: Span, blocks: BlockMask) -> list[Tile]:
    """Tiles of a block mask's grid that some query sees, minus what the causal/window band excludes."""
    classes = blocks.tile_classes.tolist()  # one read to the host per call: the plan is Python
    off = k_len - q_len
    tiles = []
    for i, row in enumerate(classes):
        q0, q1 = i * blocks.block_q, min((i + 1) * blocks.block_q, q_len)
        for j, cls in enumerate(row):
            k0, k1 = j * blocks.block_k, min((j + 1) * blocks.block_k, k_len)
            band = _span_class(span, off, q0, q1, k0, k1)
            if cls == EMPTY or band == EMPTY:
                continue
            tiles.append(Tile(q0, q1, k0, k1, masked=band != FULL, partial=cls != FULL))
    return tiles
