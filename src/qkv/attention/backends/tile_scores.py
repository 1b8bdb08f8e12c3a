"""The chunked backend's plan and the work on one tile: its raw scores, the bias, the score function and the masks
added to them, and its probabilities (``exp`` in base 2).

:mod:`qkv.attention.backends.chunked` runs the online softmax over the tiles; everything that depends only on a single
tile lives here. Tiles are 5-D, ``(batch, kv_heads, group, rows, cols)`` (see :mod:`.tile_matmul`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import overload

import torch
from torch import Tensor

from qkv.attention.backends.tile_matmul import TileBuffer, tile_matmul
from qkv.attention.backends.tiles import Tile
from qkv.attention.block_masks import BlockMask, additive_mask
from qkv.attention.masks import Span
from qkv.attention.mods import IndexGrid, ScoreMod, additive_bias, evaluate_score, is_relative
from qkv.attention.scores import ScoreFunction

# Tile sizes measured on a 2-core CPU (benchmarks/attention.py): 256×256 tiles keep a tile's scores in cache;
# a sliding window wastes less of its edge tiles with 128×128 ones (window 256, 8 heads: ~10% faster than 256×128),
# and adjacent tiles of a row are then joined up to the same 256×256 pairs (one 128×384 tile per row instead of
# three: 909 -> 782 ms fwd+bwd at N=16384; joining 256-row tiles into wider ones was slower, 2.9 -> 3.2 s causal).
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256
WINDOW_BLOCK = 128
MAX_TILE_PAIRS = DEFAULT_BLOCK_Q * DEFAULT_BLOCK_K
_NEG_INF = float("-inf")
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)


@overload
def _split_heads(t: Tensor, kv_heads: int, group: int) -> Tensor: ...
@overload
def _split_heads(t: None, kv_heads: int, group: int) -> None: ...
def _split_heads(t: Tensor | None, kv_heads: int, group: int) -> Tensor | None:
    """A 4-D mask/bias ``(b, h, q, k)`` with h in {1, heads} -> 5-D ``(b, kv_heads | 1, group | 1, q, k)``."""
    if t is None:
        return None
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], kv_heads, group, t.shape[2], t.shape[3])


def _slice(t: Tensor, tile: Tile) -> Tensor:
    """The tile's part of a broadcastable ``(..., q, k)`` tensor (size-1 dims stay as they are)."""
    rows = slice(tile.q0, tile.q1) if t.shape[-2] != 1 else slice(None)
    cols = slice(tile.k0, tile.k1) if t.shape[-1] != 1 else slice(None)
    return t[..., rows, cols]


@dataclass
class _Plan:
    """Everything the autograd Function needs besides tensors."""

    tiles: list[Tile]
    span: Span
    k_len: int
    q_len: int
    kv_heads: int
    group: int
    score: ScoreFunction | None  # None: q and k are already transformed and scaled, tiles are plain matmuls
    scale: float
    dropout: float
    seed: int
    params: tuple[Tensor, ...] = ()  # the score's parameters, then the tensors the score function reads
    blocks: BlockMask | None = None  # the mask function's tile classes and partial-tile masks
    score_mod: ScoreMod | None = None
    grid: IndexGrid | None = None  # all query and key indices (tiles slice it) when a function needs them
    num_score_params: int = 0  # the first params belong to ``score``, the rest to ``score_mod``
    relative_terms: dict = field(default_factory=dict)  # see _relative_term
    band_biases: dict = field(default_factory=dict)  # see _band_bias
    # scores in base 2: q carries log2(e) besides the scale, so a tile's probabilities are one exp2 away (see
    # _prepare); only for plain dot products without a bias or a score function, which expect natural units
    base2: bool = False
    # what q is multiplied by before its tiles' products (the score's scale, and log2(e) for base-2 plans): applied
    # to one row block at a time into a reused buffer, since a scaled copy of the whole q costs a pass over fresh
    # memory (page faults: ~13 ms per 32 MB on a 2-core CPU) in the forward pass and another for its gradient
    q_scale: float = 1.0
    block_q: int = DEFAULT_BLOCK_Q  # the tiles' grid (Tile.i, Tile.j index it)
    block_k: int = DEFAULT_BLOCK_K

    def split_rows(self, t: Tensor) -> tuple[Tensor, ...]:
        """``t (..., q_len)`` or ``(..., q_len, dim)`` cut into the grid's row blocks (views, made once per call:
        slicing per tile costs microseconds of Python that add up over hundreds of tiles)."""
        return t.split(self.block_q, dim=3)

    def split_cols(self, t: Tensor) -> tuple[Tensor, ...]:
        """``t (..., k_len, dim)`` cut into the grid's key blocks."""
        return t.split(self.block_k, dim=3)

    def scaled(self, q_rows: Tensor, buffer: TileBuffer) -> Tensor:
        """One row block of q, ``(b, kvh, g, tq, d)``, times :attr:`q_scale` (in ``buffer``)."""
        if self.q_scale == 1.0:
            return q_rows
        return torch.mul(q_rows, self.q_scale, out=buffer.take(q_rows, tuple(q_rows.shape)))

    @staticmethod
    def key_part(blocks: tuple[Tensor, ...], whole: Tensor, tile: Tile) -> Tensor:
        """The tile's keys of ``whole (..., k_len, dim)``: its block of ``blocks`` (= ``split_cols(whole)``), or a
        slice for a tile that spans several blocks."""
        return whole[:, :, :, tile.k0 : tile.k1] if tile.parts else blocks[tile.j]

    def tile_grid(self, tile: Tile) -> IndexGrid:
        assert self.grid is not None
        g = self.grid
        return IndexGrid(g.b, g.h, g.q[..., tile.q0 : tile.q1, :], g.kv[..., tile.k0 : tile.k1])


def _band_bias(plan: _Plan, tile: Tile, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The causal/window band of one tile as a term to add, ``(tq, tk)``: 0 inside, -inf outside. It depends only on
    the tile's offset from the diagonal and its size, so each is made once per call."""
    key = (tile.q0 - tile.k0, tile.q1 - tile.q0, tile.k1 - tile.k0, dtype)
    cached: Tensor | None = plan.band_biases.get(key)
    if cached is None:
        allowed = plan.span.block(plan.q_len, plan.k_len, (tile.q0, tile.q1), (tile.k0, tile.k1), device)
        cached = additive_mask(allowed, dtype)
        plan.band_biases[key] = cached
    return cached


def _score_tile(plan: _Plan, qt: Tensor, kt: Tensor, k0: int, buffer: TileBuffer | None = None) -> Tensor:
    """Raw scaled scores of a tile: ``qt (b, kvh, g, tq, d)`` x ``kt (b, kvh, 1, tk, d)`` -> ``(b, kvh, g, tq, tk)``."""
    if plan.score is None:
        return tile_matmul(qt, kt.transpose(-2, -1), buffer)
    # score functions take (batch, heads, len, dim): flatten the group into heads for them
    b, kvh, g, tq, d = qt.shape
    q4 = qt.reshape(b, kvh * g, tq, d)
    k4 = kt.expand(b, kvh, g, kt.shape[-2], kt.shape[-1]).reshape(b, kvh * g, kt.shape[-2], kt.shape[-1])
    return (plan.score(q4, k4, key_start=k0) * plan.scale).reshape(b, kvh, g, tq, kt.shape[-2])


def _fused_relative_scores(plan: _Plan, qt: Tensor, kt: Tensor, tile: Tile) -> Tensor | None:
    """``term + qt ktᵀ`` in one ``baddbmm`` (the GEMM adds the term as it writes, sparing a pass over the tile) for a
    relative additive score function on plain dot-product tiles with batch 1; None where that does not apply."""
    if plan.score is not None or plan.score_mod is None or not is_relative(plan.score_mod) or qt.shape[0] != 1:
        return None
    _, kvh, g, tq, d = qt.shape
    term = _relative_term(plan, tile, qt.dtype).expand(1, kvh, g, tq, kt.shape[-2])
    out = torch.baddbmm(
        term.reshape(kvh, g * tq, kt.shape[-2]), qt.reshape(kvh, g * tq, d), kt.reshape(kvh, -1, d).transpose(1, 2)
    )
    return out.reshape(1, kvh, g, tq, kt.shape[-2])


def _biased_scores(plan: _Plan, s: Tensor, tile: Tile, bias5: Tensor | None) -> Tensor:
    """Raw scores plus the bias (in place), through the score function: what the softmax sees before masking."""
    if bias5 is not None:
        s = s.add_(_slice(bias5, tile))
    if plan.score_mod is None:
        return s
    if is_relative(plan.score_mod) and not s.requires_grad:
        return s.add_(_relative_term(plan, tile, s.dtype))
    b, kvh, g, tq, tk = s.shape  # score functions see (batch, heads, tq, tk)
    return evaluate_score(plan.score_mod, s.reshape(b, kvh * g, tq, tk), plan.tile_grid(tile)).reshape(s.shape)


def _relative_term(plan: _Plan, tile: Tile, dtype: torch.dtype) -> Tensor:
    """The term a relative additive score function (ALiBi, T5) adds to a tile, 5-D. It depends only on the tile's
    distance from the diagonal and its size, so it is made once per distance and shared by forward and backward."""
    key = (tile.k0 - tile.q0, tile.q1 - tile.q0, tile.k1 - tile.k0, dtype)
    cached: Tensor | None = plan.relative_terms.get(key)
    if cached is not None:
        return cached
    assert plan.score_mod is not None
    with torch.no_grad():
        term = _split_heads(additive_bias(plan.score_mod, plan.tile_grid(tile), dtype), plan.kv_heads, plan.group)
    plan.relative_terms[key] = term
    return term


def _apply_masks(plan: _Plan, s: Tensor, tile: Tile, mask5: Tensor | None) -> Tensor:
    """``s`` with -inf where the mask, the band or the mask function forbids, in place. The band and the mask
    function's partial tiles are added as 0/-inf terms made once: on a CPU that is one vectorised pass, where
    ``masked_fill_`` with a bool mask costs ~20x more (measured at 4 x 256 x 256)."""
    if mask5 is not None:
        s.masked_fill_(~_slice(mask5, tile), _NEG_INF)
    if not (tile.masked or tile.partial):
        return s
    for piece in tile.pieces():  # a merged tile: each grid tile's terms on its own columns
        cols = s[..., piece.k0 - tile.k0 : piece.k1 - tile.k0] if tile.parts else s
        if piece.masked:
            cols.add_(_band_bias(plan, piece, s.dtype, s.device))
        if piece.partial:
            assert plan.blocks is not None
            cols.add_(_split_heads(plan.blocks.tile_bias(piece.i, piece.j, s.dtype), plan.kv_heads, plan.group))
    return s


def _finish_scores(plan: _Plan, s: Tensor, tile: Tile, bias5: Tensor | None, mask5: Tensor | None) -> Tensor:
    """Add the bias, apply the score function and the masks of one tile to its raw scores (``s`` must be a fresh
    tensor; it may be reused)."""
    return _apply_masks(plan, _biased_scores(plan, s, tile, bias5), tile, mask5)


def _exp_(plan: _Plan, t: Tensor) -> Tensor:
    """``exp`` in place of scores in the plan's units, as ``2^t`` (base-2 plans) or ``2^(t · log2 e)``: PyTorch's
    CPU ``exp`` leaves its fast vector path for inputs below about -87 (-inf included) and runs 3-30x slower on
    them, which tiles far from the diagonal under ALiBi or any large bias are full of; ``exp2`` stays fast everywhere
    (FlashAttention computes in base 2 too). The extra rounding is one multiplication's: below fp32's tolerance for
    the weights that count."""
    return t.exp2_() if plan.base2 else t.mul_(_LOG2E).exp2_()


def _dropout_keep(plan: _Plan, index: int, shape: torch.Size, device: torch.device) -> Tensor:
    """The keep-mask of tile ``index``; regenerated identically in backward from the call's seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed((plan.seed * 1_000_003 + index) % (2**63))
    return torch.rand(shape, generator=gen, device=device) >= plan.dropout
