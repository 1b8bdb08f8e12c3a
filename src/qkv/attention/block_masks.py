"""``block_mask``: a mask function classified tile by tile, once, so attention can skip what nobody sees.

The score matrix is cut into ``block_q × block_k`` tiles. Each tile is **empty** (no query may attend any key of it:
skipped), **full** (every pair allowed: no mask to evaluate) or **partial** (the mask function is evaluated on the
tile). The classification is made once per shape, without the dense ``q_len × k_len`` mask (one row of tiles at a
time), and a :class:`BlockMask` can serve every layer and every training step that share the shape.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkv.attention.mods import MaskMod, evaluate_mask, index_grid
from qkv.errors import ConfigError, MaskError

__all__ = ["BlockMask", "additive_mask", "block_mask", "cached_block_mask", "EMPTY", "PARTIAL", "FULL", "DEFAULT_BLOCK"]

EMPTY, PARTIAL, FULL = 0, 1, 2
# 256 x 256 tiles: on a 2-core CPU a tile's matmuls run ~1.6x faster per FLOP than at 128 x 128, which outweighs
# the extra pairs a coarser grid visits (a 16-document mask at N = 16,384: 3.9% of the pairs instead of 3.5%)
DEFAULT_BLOCK = 256


@dataclass(frozen=True, eq=False)  # (compared and hashed by identity: one mask, many calls)
class BlockMask:
    """A mask function and its tile classes ``(batch | 1, heads | 1, q_blocks, k_blocks)`` (EMPTY/PARTIAL/FULL).

    Pass it to :func:`qkv.attend` as ``block_mask=``. Size-1 batch or head dims mean the function ignores that index.
    It is a snapshot: tensors the function reads (document ids, say) must not change while it is in use.
    """

    mask_mod: MaskMod
    batch: int
    heads: int
    q_len: int
    k_len: int
    block_q: int
    block_k: int
    classes: Tensor  # int8 (batch | 1, heads | 1, q_blocks, k_blocks)
    # the masks of partial tiles, evaluated on first use and kept: O(partial tiles × block²) bools, and every later
    # call (every layer, forward and backward) reads them instead of calling the function again
    _tile_masks: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)
    _tile_biases: dict[tuple[int, int, torch.dtype], Tensor] = field(default_factory=dict, repr=False)
    _dense: dict[str, Tensor] = field(default_factory=dict, repr=False)  # per device, see dense()

    def tile_mask(self, i: int, j: int) -> Tensor:
        """The bool mask of tile ``(i, j)``: queries ``[i·block_q, ...)`` x keys ``[j·block_k, ...)``, 4-D with
        size-1 batch/head dims where the function ignores them."""
        mask = self._tile_masks.get((i, j))
        if mask is None:
            rows = (i * self.block_q, min((i + 1) * self.block_q, self.q_len))
            cols = (j * self.block_k, min((j + 1) * self.block_k, self.k_len))
            grid = index_grid(self.batch, self.heads, self.q_len, self.k_len, self.classes.device, rows, cols)
            mask = evaluate_mask(self.mask_mod, grid)
            self._tile_masks[(i, j)] = mask
        return mask

    def tile_bias(self, i: int, j: int, dtype: torch.dtype) -> Tensor:
        """:meth:`tile_mask` as a term to add to the tile's scores (0 allowed, -inf not), made once per dtype."""
        bias = self._tile_biases.get((i, j, dtype))
        if bias is None:
            bias = additive_mask(self.tile_mask(i, j), dtype)
            self._tile_biases[(i, j, dtype)] = bias
        return bias

    @property
    def tile_classes(self) -> Tensor:
        """One class per tile for a whole batched call ``(q_blocks, k_blocks)``: empty only if empty for every row
        and head, full only if full for all of them."""
        flat = self.classes.flatten(0, 1)
        empty = (flat == EMPTY).all(dim=0)
        full = (flat == FULL).all(dim=0)
        return torch.where(empty, EMPTY, torch.where(full, FULL, PARTIAL)).to(torch.int8)

    def density(self) -> float:
        """The fraction of tiles that are not empty (what attention computes, against 1.0 for dense)."""
        return float((self.classes != EMPTY).float().mean())

    def dense(self, device: torch.device | str | None = None) -> Tensor:
        """The whole bool mask ``(batch | 1, heads | 1, q_len, k_len)``, O(N²): kept after the first call, since
        the backends that take a dense mask (fused, reference: small inputs) read it once per layer."""
        device = torch.device(device) if device is not None else self.classes.device
        cached = self._dense.get(str(device))
        if cached is None:
            grid = index_grid(self.batch, self.heads, self.q_len, self.k_len, device)
            allowed = evaluate_mask(self.mask_mod, grid)
            cached = allowed.expand(self.classes.shape[0], self.classes.shape[1], self.q_len, self.k_len)
            self._dense[str(device)] = cached
        return cached

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise :class:`MaskError` unless this mask was made for a ``(batch, heads, q_len, k_len)`` attention."""
        b, h = self.classes.shape[:2]
        if (q_len, k_len) != (self.q_len, self.k_len) or b not in (1, batch) or h not in (1, heads):
            raise MaskError(
                f"this block mask was made for (batch, heads, q_len, k_len) = ({self.batch}, {self.heads}, "
                f"{self.q_len}, {self.k_len}), the attention is ({batch}, {heads}, {q_len}, {k_len}); make one per "
                "shape with qkv.attention.block_mask"
            )

    def __repr__(self) -> str:
        return (
            f"BlockMask({getattr(self.mask_mod, '__name__', 'mask_mod')}, batch={self.batch}, heads={self.heads}, "
            f"q_len={self.q_len}, k_len={self.k_len}, block={self.block_q}x{self.block_k}, "
            f"density={self.density():.3f})"
        )


def block_mask(
    mask_mod: MaskMod | Callable[..., Tensor],
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    block: int | tuple[int, int] = DEFAULT_BLOCK,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Classify the tiles of ``mask_mod`` for a ``(batch, heads, q_len, k_len)`` attention.

    Args:
        mask_mod: ``(b, h, q_idx, kv_idx) -> bool``, see :mod:`qkv.attention.mods`.
        block: tile size, or ``(block_q, block_k)``.
        device: where the function is evaluated (the attention's device).

    Memory: one row of tiles at a time, ``block_q × k_len`` per (batch, head) the function depends on.
    """
    block_q, block_k = (block, block) if isinstance(block, int) else block
    if min(batch, heads, q_len, k_len) < 1:
        raise ConfigError(f"block_mask needs batch, heads, q_len, k_len >= 1, got {batch}, {heads}, {q_len}, {k_len}")
    if block_q < 1 or block_k < 1:
        raise ConfigError(f"block sizes must be >= 1, got {block!r}")
    if not callable(mask_mod):
        raise ConfigError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> bool, got {type(mask_mod).__name__}")
    n_q, n_k = -(-q_len // block_q), -(-k_len // block_k)
    rows = []
    for q0 in range(0, q_len, block_q):
        q1 = min(q0 + block_q, q_len)
        grid = index_grid(batch, heads, q_len, k_len, device, rows=(q0, q1))
        allowed = evaluate_mask(mask_mod, grid)  # (B|1, H|1, tq | 1, k_len | 1)
        allowed = allowed.expand(*allowed.shape[:2], q1 - q0, k_len)
        pad = n_k * block_k - k_len  # the last key block may be short: pad with "allowed" for all, "not" for any
        tiles_any = torch.nn.functional.pad(allowed, (0, pad), value=False)
        tiles_all = torch.nn.functional.pad(allowed, (0, pad), value=True)
        shape = (*allowed.shape[:2], q1 - q0, n_k, block_k)
        any_ = tiles_any.reshape(shape).any(dim=-1).any(dim=2)
        all_ = tiles_all.reshape(shape).all(dim=-1).all(dim=2)
        rows.append(torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8))
    # rows may differ in their size-1 dims (a function that reads b only on some rows is still read as a whole)
    b = max(r.shape[0] for r in rows)
    h = max(r.shape[1] for r in rows)
    classes = torch.stack([r.expand(b, h, n_k) for r in rows], dim=2)
    assert classes.shape[2] == n_q
    return BlockMask(mask_mod, batch, heads, q_len, k_len, block_q, block_k, classes)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask (True = may attend) as a term to add to scores: 0 where allowed, -inf where not, same shape."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


# mask function -> its block masks, most recent last; a function's entries go when the function does
_CACHE: weakref.WeakKeyDictionary[Callable[..., Tensor], OrderedDict[tuple, BlockMask]] = weakref.WeakKeyDictionary()
_PER_FUNCTION = 4  # shapes kept per function (training alternates few: train, eval, a last short batch)


def cached_block_mask(
    mask_mod: MaskMod,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    block: tuple[int, int],
    device: torch.device | str | None = None,
) -> BlockMask:
    """:func:`block_mask`, made once per function, shape and state: what attention uses for a bare ``mask_mod``.

    Classifying the tiles costs about half a forward-backward pass at N = 16,384, so a function passed again (the
    next layer, the next step) reuses its block mask. The key holds the function's identity, the shape, the device
    and the state the function reads: every tensor it reaches (closed over, through the functions it combines, a
    ``functools.partial``'s arguments, a module's parameters and buffers, a callable object's attributes) with its
    in-place version counter, and every plain value among them. A function that reads anything else (a global that
    changes) must be given as a fresh function or as a ``block_mask`` made for the purpose.
    """
    try:
        per_function = _CACHE.setdefault(mask_mod, OrderedDict())
    except TypeError:  # not weakly referenceable (a builtin function): classified per call
        return block_mask(mask_mod, batch, heads, q_len, k_len, block, device)
    key = (batch, heads, q_len, k_len, block, str(torch.device(device) if device is not None else "cpu"),
           _closure_state(mask_mod))  # fmt: skip
    found = per_function.get(key)
    if found is not None:
        per_function.move_to_end(key)
        return found
    made = block_mask(mask_mod, batch, heads, q_len, k_len, block, device)
    per_function[key] = made
    while len(per_function) > _PER_FUNCTION:
        per_function.popitem(last=False)
    return made


def _closure_state(fn: object, seen: set[int] | None = None) -> tuple:
    """What ``fn`` reads besides its arguments, as a hashable snapshot: tensors by identity and version, plain
    values by value; closures, ``functools.partial``'s arguments, modules and callable objects' attributes
    recursively; anything else by identity."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return ()
    seen.add(id(fn))
    if isinstance(fn, Tensor):
        return (id(fn), fn._version)
    if fn is None or isinstance(fn, (bool, int, float, str)):
        return (fn,)
    if isinstance(fn, torch.nn.Module):
        return tuple(_closure_state(t, seen) for t in (*fn.parameters(), *fn.buffers()))
    if isinstance(fn, (tuple, list)):
        return tuple(_closure_state(item, seen) for item in fn)
    if isinstance(fn, dict):
        return tuple((key, _closure_state(value, seen)) for key, value in fn.items())
    if isinstance(fn, functools.partial):
        return (id(fn), _closure_state(fn.func, seen), _closure_state(fn.args, seen), _closure_state(fn.keywords, seen))
    cells = getattr(fn, "__closure__", None)
    if callable(fn) and cells is not None:
        state = []
        for cell in cells:
            try:
                state.append(_closure_state(cell.cell_contents, seen))
            except ValueError:  # an empty cell
                state.append(())
        return (id(fn), *state)
    if callable(fn) and not isinstance(fn, type) and hasattr(fn, "__dict__"):  # an object with __call__
        return (id(fn), _closure_state(vars(fn), seen))
    return (id(fn),)
