"""Mask and score functions: attention variants written as small functions of indices (FlexAttention's model).

A **mask function** ``mask_mod(b, h, q_idx, kv_idx) -> bool`` says whether query ``q_idx`` of batch row ``b`` and head
``h`` may attend key ``kv_idx``; a **score function** ``score_mod(score, b, h, q_idx, kv_idx) -> score`` changes one
scaled score before the softmax. qkv calls them with *broadcastable index tensors* — ``b`` is ``(batch, 1, 1, 1)``,
``h`` ``(1, heads, 1, 1)``, ``q_idx`` ``(1, 1, q, 1)``, ``kv_idx`` ``(1, 1, 1, k)`` (or the part of them one tile
covers) — so functions written for ``torch.nn.attention.flex_attention`` work unchanged, and the shape of the result
shows which indices a function really uses (a mask that ignores ``b`` and ``h`` is evaluated once for all of them).

``q_idx`` is a query's absolute position among the keys: with ``q_len < k_len`` (new queries after cached keys) the
first query is at ``k_len - q_len``, the alignment of qkv's ``causal``. When ``q_len == k_len`` it is FlexAttention's.

Built-ins: masks :func:`causal`, :func:`sliding_window`, :func:`document`, :func:`prefix_lm`, :func:`dilated`
(combine them with :func:`and_masks` / :func:`or_masks`); scores :func:`alibi`, :func:`soft_cap` and the learnable
:class:`T5RelativeBias`. None of them builds an N×N tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.attention.masks import Window, window_bounds
from qkv.attention.positional import alibi_slopes
from qkv.errors import ConfigError, ShapeError, describe_shape

__all__ = [
    "AdditiveScoreMod",
    "MaskMod",
    "ScoreMod",
    "IndexGrid",
    "T5RelativeBias",
    "alibi",
    "and_masks",
    "captured_tensors",
    "causal",
    "dilated",
    "document",
    "evaluate_mask",
    "evaluate_score",
    "index_grid",
    "is_additive",
    "is_relative",
    "is_strictly_causal",
    "additive_bias",
    "or_masks",
    "prefix_lm",
    "sliding_window",
    "soft_cap",
]

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class IndexGrid:
    """Broadcastable indices of a block of the score matrix: ``b (B,1,1,1)``, ``h (1,H,1,1)``, ``q (1,1,tq,1)``
    (absolute query positions), ``kv (1,1,1,tk)``."""

    b: Tensor
    h: Tensor
    q: Tensor
    kv: Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.b.shape[0], self.h.shape[1], self.q.shape[2], self.kv.shape[3])


def index_grid(
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    device: torch.device | str | None = None,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> IndexGrid:
    """The indices of queries ``[rows)`` x keys ``[cols)`` (default: all) of a ``(batch, heads, q_len, k_len)``
    attention; query indices are absolute positions (``+ k_len - q_len``)."""
    rows = rows or (0, q_len)
    cols = cols or (0, k_len)
    off = k_len - q_len
    return IndexGrid(
        b=torch.arange(batch, device=device).view(-1, 1, 1, 1),
        h=torch.arange(heads, device=device).view(1, -1, 1, 1),
        q=torch.arange(rows[0] + off, rows[1] + off, device=device).view(1, 1, -1, 1),
        kv=torch.arange(cols[0], cols[1], device=device).view(1, 1, 1, -1),
    )


def _name(fn: object) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def evaluate_mask(mask_mod: MaskMod, grid: IndexGrid) -> Tensor:
    """``mask_mod`` on ``grid``: a bool tensor of 4 dims broadcastable to ``grid.shape`` (size 1 where the function
    ignores an index)."""
    allowed = mask_mod(grid.b, grid.h, grid.q, grid.kv)
    if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
        got = allowed.dtype if isinstance(allowed, Tensor) else type(allowed).__name__
        raise ConfigError(f"mask_mod {_name(mask_mod)} must return a bool tensor (True = may attend), got {got}")
    if allowed.dim() > 4 or any(s not in (1, n) for s, n in zip(reversed(allowed.shape), reversed(grid.shape))):
        raise ShapeError(
            f"mask_mod {_name(mask_mod)} returned shape {describe_shape(allowed.shape)}, which does not broadcast "
            f"to (batch, heads, q, k) = {describe_shape(grid.shape)}; write it with the index arguments it is given"
        )
    return allowed.reshape((1,) * (4 - allowed.dim()) + tuple(allowed.shape))


def evaluate_score(score_mod: ScoreMod, scores: Tensor, grid: IndexGrid) -> Tensor:
    """``score_mod(scores, ...)`` on ``grid``; ``scores (batch, heads, tq, tk)`` and the result have one shape."""
    out = score_mod(scores, grid.b, grid.h, grid.q, grid.kv)
    if not isinstance(out, Tensor) or not out.dtype.is_floating_point:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"score_mod {_name(score_mod)} must return float scores, got {got}")
    if out.shape != scores.shape:
        out = out.expand(scores.shape) if out.dim() <= 4 else out
        if out.shape != scores.shape:
            raise ShapeError(
                f"score_mod {_name(score_mod)} returned shape {describe_shape(out.shape)} for scores of shape "
                f"{describe_shape(scores.shape)}"
            )
    return out


class AdditiveScoreMod:
    """A score function that only adds a term of the indices: ``score + term(b, h, q_idx, kv_idx)``.

    Saying so lets qkv turn it into a dense bias where that is small (the fused backend) and, with
    ``relative=True`` (the term depends on ``q_idx`` and ``kv_idx`` only through ``kv_idx - q_idx``, as ALiBi's and
    T5's do), share one tile's term with every tile at the same distance from the diagonal. Wrap your own term::

        mods.AdditiveScoreMod(lambda b, h, q_idx, kv_idx: -0.1 * (q_idx - kv_idx).abs(), relative=True)
    """

    def __init__(self, term: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], *, relative: bool = False) -> None:
        if not callable(term):
            raise ConfigError(f"an additive score term must be a function of indices, got {type(term).__name__}")
        self.term, self.relative = term, relative
        self.__name__ = getattr(term, "__name__", "additive_score")  # (error messages name the term)

    def __call__(self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + self.term(b, h, q_idx, kv_idx).to(score.dtype)


def is_additive(score_mod: object) -> bool:
    """True for score functions that only add a term of the indices: an :class:`AdditiveScoreMod`, or a module
    that says so (:class:`T5RelativeBias`)."""
    return isinstance(score_mod, (AdditiveScoreMod, T5RelativeBias))


def is_relative(score_mod: object) -> bool:
    """True for additive score functions whose term depends on ``q_idx`` and ``kv_idx`` only through
    ``kv_idx - q_idx`` (ALiBi, T5)."""
    return isinstance(score_mod, T5RelativeBias) or (isinstance(score_mod, AdditiveScoreMod) and score_mod.relative)


def additive_bias(score_mod: ScoreMod, grid: IndexGrid, dtype: torch.dtype) -> Tensor:
    """The term an additive score function adds, as a 4-D tensor broadcastable to ``grid.shape``."""
    zero = torch.zeros((1, 1, 1, 1), dtype=dtype, device=grid.kv.device)
    return score_mod(zero, grid.b, grid.h, grid.q, grid.kv)


def captured_tensors(fn: object) -> list[Tensor]:
    """Tensors that need gradients and ``fn`` reads: a module's parameters, or what a function closes over (tensors
    and modules). The chunked backend routes their gradients through its own backward pass."""
    if isinstance(fn, nn.Module):
        return [p for p in fn.parameters() if p.requires_grad]
    if isinstance(fn, AdditiveScoreMod):
        return captured_tensors(fn.term)
    found: list[Tensor] = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, Tensor) and value.requires_grad:
            found.append(value)
        elif isinstance(value, nn.Module):
            found += [p for p in value.parameters() if p.requires_grad]
        elif callable(value) and value is not fn:
            found += [t for t in captured_tensors(value) if all(t is not f for f in found)]
    return found


# --------------------------------------------------------------------------------------------------- mask functions


def causal(strict: bool = False) -> MaskMod:
    """Key at or before the query: exactly what ``qkv.attend(causal=True)`` allows. ``strict``: keys strictly
    before the query (its own position excluded, so the first query sees nothing and gets zeros), the mask of
    models whose keys read the very value the query predicts (PixelSNAIL); the fused backend runs it on SDPA's
    causal kernel, one position shifted, instead of a dense mask (see :func:`is_strictly_causal`)."""
    if strict:
        return strictly_causal_mod

    def causal_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return q_idx >= kv_idx

    return causal_mod


def strictly_causal_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """``causal(strict=True)``: key strictly before the query."""
    return kv_idx < q_idx


def is_strictly_causal(mask_mod: MaskMod | None) -> bool:
    """Whether ``mask_mod`` is :func:`causal` ``(strict=True)`` itself (a backend may then skip evaluating it; a
    user's function with the same values is evaluated as any other)."""
    return mask_mod is strictly_causal_mod


def sliding_window(window: Window) -> MaskMod:
    """Exactly what ``qkv.attend(window=window)`` allows, in qkv's one window convention
    (:mod:`qkv.attention.masks`): an int ``w`` is the number of keys a query sees, itself included and counting back
    (Mistral's ``sliding_window``); ``(left, right)`` the keys seen on each side besides itself."""
    left, right = window_bounds(window)

    def sliding_window_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)

    return sliding_window_mod


def document(doc_ids: Tensor, causal: bool = True) -> MaskMod:
    """Packed sequences: a token sees only tokens of its own document (and only earlier ones when ``causal``).

    ``doc_ids`` ``(seq,)`` or ``(batch, seq)`` integers: the document of each key position.
    """
    if doc_ids.dim() not in (1, 2) or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool:
        raise ShapeError(
            f"doc_ids must be integer (seq,) or (batch, seq), got {doc_ids.dtype} {describe_shape(doc_ids.shape)}"
        )
    ids = doc_ids if doc_ids.dim() == 2 else doc_ids[None]

    def document_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        row = b if ids.shape[0] > 1 else torch.zeros_like(b)
        same = ids[row, q_idx] == ids[row, kv_idx]
        return same & (q_idx >= kv_idx) if causal else same

    return document_mod


def prefix_lm(prefix_length: int | Tensor) -> MaskMod:
    """Prefix-LM: every query sees the whole prefix (bidirectional), the rest is causal. ``prefix_length`` an int or
    ``(batch,)`` lengths."""
    lengths = torch.as_tensor(prefix_length)
    if lengths.dim() > 1 or lengths.dtype.is_floating_point or (lengths < 0).any():
        raise ConfigError(f"prefix_length must be an int >= 0 or (batch,) of them, got {prefix_length!r}")

    def prefix_lm_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        limit = lengths.to(kv_idx.device)[b] if lengths.dim() == 1 else lengths.to(kv_idx.device)
        return (kv_idx < limit) | (q_idx >= kv_idx)

    return prefix_lm_mod


def dilated(dilation: int, causal: bool = True) -> MaskMod:
    """Every ``dilation``-th key counting back from the query (a strided pattern, Child et al. 2019)."""
    if dilation < 1:
        raise ConfigError(f"dilated needs dilation >= 1, got {dilation}")

    def dilated_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        on_stride = (q_idx - kv_idx) % dilation == 0
        return on_stride & (q_idx >= kv_idx) if causal else on_stride

    return dilated_mod


def _fold_masks(mods: tuple[MaskMod, ...], combine: Callable[[Tensor, Tensor], Tensor], name: str) -> MaskMod:
    if not mods:
        raise ConfigError(f"{name} needs at least one mask function")

    def folded(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        out = mods[0](b, h, q_idx, kv_idx)
        for mod in mods[1:]:
            out = combine(out, mod(b, h, q_idx, kv_idx))
        return out

    folded.__name__ = name
    return folded


def and_masks(*mods: MaskMod) -> MaskMod:
    """Allowed where every function allows."""
    return _fold_masks(mods, torch.logical_and, "and_masks")


def or_masks(*mods: MaskMod) -> MaskMod:
    """Allowed where any function allows."""
    return _fold_masks(mods, torch.logical_or, "or_masks")


# -------------------------------------------------------------------------------------------------- score functions


def alibi(num_heads: int) -> ScoreMod:
    """ALiBi (Press et al. 2022): ``score - slope_h · |q - kv|``, the same numbers as
    :func:`qkv.attention.positional.alibi_bias` without its ``(heads, N, N)`` tensor."""
    slopes = alibi_slopes(num_heads)

    def alibi_term(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return -slopes.to(q_idx.device)[h] * (q_idx - kv_idx).abs()

    return AdditiveScoreMod(alibi_term, relative=True)


def soft_cap(cap: float) -> ScoreMod:
    """``cap · tanh(score / cap)`` (Gemma 2, Grok): scores stay within ``(-cap, cap)``."""
    if not cap > 0:
        raise ConfigError(f"soft_cap needs cap > 0, got {cap}")

    def soft_cap_score(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return cap * torch.tanh(score / cap)

    return soft_cap_score


class T5RelativeBias(nn.Module):
    """T5's relative position bias (Raffel et al. 2020) as a score function: ``score + table[bucket(kv - q), h]``.

    Distances are put in ``num_buckets`` buckets, exact for small ones and logarithmic up to ``max_distance``
    (half the buckets per direction when ``bidirectional``); the table ``(num_buckets, heads)`` is learned.
    """

    def __init__(
        self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ) -> None:
        super().__init__()
        if num_buckets < 2 or max_distance < 1:
            raise ConfigError(
                f"T5RelativeBias needs num_buckets >= 2 and max_distance >= 1, got {num_buckets}, {max_distance}"
            )
        self.num_heads, self.num_buckets, self.max_distance = num_heads, num_buckets, max_distance
        self.bidirectional = bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.relative_attention_bias.weight, std=0.02)

    def bucket(self, relative: Tensor) -> Tensor:
        """Bucket of ``relative = kv - q`` (HF's ``T5Attention._relative_position_bucket``)."""
        buckets = self.num_buckets
        out = torch.zeros_like(relative)
        if self.bidirectional:
            buckets //= 2
            out = out + (relative > 0).long() * buckets
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)
        exact = buckets // 2
        is_small = distance < exact
        large = (
            exact
            + (
                torch.log(distance.float().clamp(min=1) / exact)
                / math.log(self.max_distance / exact)
                * (buckets - exact)
            ).long()
        )
        large = large.clamp(max=buckets - 1)
        return out + torch.where(is_small, distance, large)

    def forward(self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        table = self.relative_attention_bias.weight  # (buckets, heads)
        bias = table[self.bucket(kv_idx - q_idx), h]  # (1, 1, tq, tk) indices and (1, H, 1, 1) heads -> (1, H, tq, tk)
        return score + bias.to(score.dtype)
