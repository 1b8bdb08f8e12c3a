"""One validated attention call: the arguments of :func:`qkv.attend`, checked and normalised once.

Backends receive an :class:`AttentionCall` and may trust it: shapes agree, the mask is bool and broadcasts, the
score is a module, the scale is a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.attention.block_masks import BlockMask
from qkv.attention.masks import Span, Window, check_broadcastable, make_span
from qkv.attention.mods import IndexGrid, MaskMod, ScoreMod, additive_bias, evaluate_mask, index_grid, is_additive
from qkv.attention.scores import ScoreFunction, resolve_score
from qkv.attention.softmax import compute_dtype
from qkv.errors import ConfigError, DTypeError, MaskError, ShapeError, describe_shape

__all__ = ["AttentionCall", "as_4d", "build_call", "mask_function", "repeat_kv"]


@dataclass(frozen=True)
class AttentionCall:
    q: Tensor  # (batch, heads, q_len, q_dim)
    k: Tensor  # (batch, kv_heads, k_len, k_dim)
    v: Tensor  # (batch, kv_heads, k_len, v_dim)
    mask: Tensor | None  # bool, 4-D, broadcastable to (batch, heads, q_len, k_len); True = may attend
    span: Span  # causal / window structure
    bias: Tensor | None  # float, 4-D, broadcastable like mask
    score: ScoreFunction
    scale: float
    dropout: float
    return_weights: bool
    mask_mod: MaskMod | None = None  # (b, h, q_idx, kv_idx) -> bool, see qkv.attention.mods
    blocks: BlockMask | None = None  # the mask_mod's tile classes, when the caller made them once
    score_mod: ScoreMod | None = None  # (score, b, h, q_idx, kv_idx) -> score

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[1]

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 = plain multi-head, heads = multi-query)."""
        return self.heads // self.kv_heads

    @property
    def q_len(self) -> int:
        return self.q.shape[2]

    @property
    def k_len(self) -> int:
        return self.k.shape[2]

    @property
    def target_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.q_len, self.k_len)

    @property  # (not cached_property: its lock breaks torch.compile graphs)
    def is_dot_product(self) -> bool:
        """True when the score is ``q' · k'`` for some transform of q and k (fused and fast paths apply)."""
        return type(self.score).as_dot_product is not ScoreFunction.as_dot_product

    def grid(self) -> IndexGrid:
        """The indices mask and score functions are evaluated on (all queries and keys)."""
        return index_grid(self.batch, self.heads, self.q_len, self.k_len, self.q.device)

    def dense_mask(self) -> Tensor | None:
        """User mask AND the causal/window span AND the mask function, as one 4-D bool tensor (or None when
        everything is allowed)."""
        out = self.mask
        for part in (
            self.span.dense(self.q_len, self.k_len, self.q.device),
            self._mod_mask(),
        ):
            if part is not None:
                out = part if out is None else out & part
        return out

    def _mod_mask(self) -> Tensor | None:
        """The mask function's dense mask (a block mask keeps its own: one evaluation serves every layer)."""
        if self.mask_mod is None:
            return None
        if self.blocks is not None:
            return self.blocks.dense(self.q.device)
        return evaluate_mask(self.mask_mod, self.grid())

    def dense_bias(self) -> Tensor | None:
        """The bias plus an additive score function's bias, dense (or None); only for additive score functions."""
        if self.score_mod is None:
            return self.bias
        assert is_additive(self.score_mod), "only additive score functions become a bias"
        extra = additive_bias(self.score_mod, self.grid(), compute_dtype(self.q.dtype))
        return extra if self.bias is None else self.bias.to(extra.dtype) + extra


def as_4d(t: Tensor) -> Tensor:
    """Prepend size-1 dims so a broadcastable mask/bias has exactly 4 dims."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def repeat_kv(t: Tensor, group: int) -> Tensor:
    """``(batch, kv_heads, len, dim)`` -> ``(batch, kv_heads * group, len, dim)``; head h uses kv head h // group."""
    if group == 1:
        return t
    b, h_kv, n, d = t.shape
    return t[:, :, None].expand(b, h_kv, group, n, d).reshape(b, h_kv * group, n, d)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(
                f"{name} must be 4-D (batch, heads, seq, dim), got shape {describe_shape(t.shape)}; "
                "split heads first, e.g. x.view(batch, seq, heads, dim).transpose(1, 2)"
            )
        if not t.dtype.is_floating_point:
            raise DTypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise DTypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ShapeError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ShapeError(
            f"q, k and v must share the batch size, got q {describe_shape(q.shape)}, k {describe_shape(k.shape)}, "
            f"v {describe_shape(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3]:
        raise ShapeError(
            f"k and v must agree in (batch, kv_heads, k_len), got k {describe_shape(k.shape)} and "
            f"v {describe_shape(v.shape)}"
        )
    heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ShapeError(
            f"the number of query heads ({heads}) must be a multiple of the key/value heads ({kv_heads}) "
            "for grouped-query attention"
        )


def _check_mask(mask: Tensor | None, target: tuple[int, int, int, int], device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise MaskError(f"mask must be a bool tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        hint = " (for an additive float mask, pass it as bias=)" if mask.dtype.is_floating_point else ""
        raise MaskError(f"mask must be bool with True = may attend, got dtype {mask.dtype}{hint}")
    if mask.device != device:
        raise MaskError(f"mask is on {mask.device} but q is on {device}")
    try:
        check_broadcastable("mask", mask, target)
    except ShapeError as exc:
        raise MaskError(str(exc)) from None
    return as_4d(mask)


def _check_bias(bias: Tensor | None, target: tuple[int, int, int, int], device: torch.device) -> Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, Tensor) or not bias.dtype.is_floating_point:
        got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
        raise MaskError(f"bias must be a float tensor added to the scores, got {got}; a bool mask goes in mask=")
    if bias.device != device:
        raise MaskError(f"bias is on {bias.device} but q is on {device}")
    try:
        check_broadcastable("bias", bias, target)
    except ShapeError as exc:
        raise MaskError(str(exc)) from None
    return as_4d(bias)


def mask_function(mask_mod: MaskMod | None, block_mask: BlockMask | None) -> MaskMod | None:
    """The one mask function of a call: ``mask_mod``, or the one ``block_mask`` was made from (never both)."""
    if isinstance(mask_mod, BlockMask):
        raise ConfigError("a BlockMask goes in block_mask= (FlexAttention's argument); mask_mod= takes a function")
    if block_mask is None:
        return mask_mod
    if not isinstance(block_mask, BlockMask):
        raise ConfigError(
            f"block_mask must be a BlockMask from qkv.attention.block_mask(...), got {type(block_mask).__name__}"
        )
    if mask_mod is not None:
        raise ConfigError(
            "block_mask carries its own mask function: pass block_mask= or mask_mod=, not both (to combine them, "
            "make the block mask from mods.and_masks(...))"
        )
    return block_mask.mask_mod


def build_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    causal: bool,
    window: Window | None,
    bias: Tensor | None,
    score: str | ScoreFunction,
    scale: float | None,
    dropout: float,
    return_weights: bool,
    mask_mod: MaskMod | None = None,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
) -> AttentionCall:
    """Validate the arguments of :func:`qkv.attend` (see there) and bundle them."""
    _check_qkv(q, k, v)
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    mask_mod = mask_function(mask_mod, block_mask)
    if block_mask is not None:
        block_mask.check(*target)
    for name, fn in (("mask_mod", mask_mod), ("score_mod", score_mod)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be a function of indices (see qkv.attention.mods), got {type(fn).__name__}")
    span = make_span(causal, window).simplify(q.shape[2], k.shape[2])
    score_fn = resolve_score(score)
    score_fn.check_dims(q.shape[-1], k.shape[-1])
    if scale is None:
        scale = score_fn.default_scale(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"scale must be a finite number or None, got {scale!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return AttentionCall(
        q=q,
        k=k,
        v=v,
        mask=_check_mask(mask, target, q.device),
        span=span,
        bias=_check_bias(bias, target, q.device),
        score=score_fn,
        scale=float(scale),
        dropout=float(dropout),
        return_weights=bool(return_weights),
        mask_mod=mask_mod,
        blocks=block_mask,
        score_mod=score_mod,
    )
