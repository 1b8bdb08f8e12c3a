"""Which tiles of the score matrix attention visits: the causal/window band and block masks, planned in Python.

A tile is queries ``[q0, q1)`` x keys ``[k0, k1)``, one block of a fixed grid. :func:`plan_tiles` covers a
causal/window band, skipping key blocks nobody sees and marking only the tiles the band cuts through;
:func:`plan_block_tiles` walks a :class:`~qkv.attention.block_masks.BlockMask`'s grid, dropping empty tiles and
marking partial ones. :func:`merge_rows` then joins a row's adjacent tiles where the grid is finer than a tile needs to
be (a sliding window's 128-wide blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.attention.block_masks import EMPTY, FULL, PARTIAL, BlockMask
from qkv.attention.masks import Span

__all__ = ["Tile", "merge_rows", "plan_block_tiles", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """Queries ``[q0, q1)`` against keys ``[k0, k1)``: block ``(i, j)`` of a grid of ``block_q × block_k`` tiles
    (the attention splits its tensors by the grid once and reads row block ``i``); ``masked`` when the
    causal/window band cuts through it, ``partial`` when the mask function must be evaluated on it (the block mask
    calls it neither empty nor full).

    A tile made by :func:`merge_rows` spans several key blocks of one row, ``j`` the first: ``parts`` holds the
    grid tiles it joins, each masked or partial on its own columns only.
    """

    q0: int
    q1: int
    k0: int
    k1: int
    masked: bool
    partial: bool = False
    i: int = 0
    j: int = 0
    parts: tuple[Tile, ...] = ()

    def pieces(self) -> tuple[Tile, ...]:
        """The grid tiles this tile covers (itself, unless merged), left to right."""
        return self.parts or (self,)


def plan_tiles(q_len: int, k_len: int, span: Span, block_q: int, block_k: int) -> list[Tile]:
    """The tiles of a ``block_q × block_k`` grid that ``span`` leaves some pair in, row block by row block.

    Query ``i`` has absolute position ``t = i + (k_len - q_len)`` and sees keys ``[t - left, t + right]``; a row
    block sees the key blocks between its first query's first key and its last query's last key, so a sliding window
    costs O(N · window). Only the tiles the band cuts through are ``masked``.
    """
    off = k_len - q_len
    tiles: list[Tile] = []
    for i, q0 in enumerate(range(0, q_len, block_q)):
        q1 = min(q0 + block_q, q_len)
        first = 0 if span.left is None else max(0, q0 + off - span.left)
        last = k_len - 1 if span.right is None else min(k_len - 1, q1 - 1 + off + span.right)
        for j in range(first // block_k, last // block_k + 1) if first <= last else ():
            k0, k1 = j * block_k, min((j + 1) * block_k, k_len)
            band = _span_class(span, off, q0, q1, k0, k1)
            if band != EMPTY:
                tiles.append(Tile(q0, q1, k0, k1, masked=band != FULL, i=i, j=j))
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
            tiles.append(Tile(q0, q1, k0, k1, masked=band != FULL, partial=cls != FULL, i=i, j=j))
    return tiles


def merge_rows(tiles: list[Tile], max_keys: int) -> list[Tile]:
    """Runs of adjacent tiles in one row block joined into tiles of at most ``max_keys`` keys.

    Fewer, wider tiles mean fewer Python steps and larger matrix products for the same pairs (a window of 256 with
    128-wide blocks visits 3 tiles per row; joined, one). Runs are cut from the row's last tile backward, so the
    tiles that meet a causal diagonal have the same shape in every row and share the terms cached by shape.
    """
    merged: list[Tile] = []
    row: list[Tile] = []
    for tile in [*tiles, None]:
        if row and (tile is None or tile.i != row[-1].i or tile.k0 != row[-1].k1):
            merged.extend(_join_run(row, max_keys))
            row = []
        if tile is not None:
            row.append(tile)
    return merged


def _join_run(run: list[Tile], max_keys: int) -> list[Tile]:
    """Adjacent tiles of one row (left to right) as groups of at most ``max_keys`` keys, cut from the right."""
    groups: list[list[Tile]] = []
    for tile in reversed(run):
        if groups and groups[-1][-1].k1 - tile.k0 <= max_keys:
            groups[-1].insert(0, tile)
        else:
            groups.append([tile])
    joined = []
    for group in reversed(groups):
        first, last = group[0], group[-1]
        if len(group) == 1:
            joined.append(first)
            continue
        joined.append(
            Tile(
                first.q0, first.q1, first.k0, last.k1,
                masked=any(t.masked for t in group), partial=any(t.partial for t in group),
                i=first.i, j=first.j, parts=tuple(group),
            )
        )  # fmt: skip
    return joined
