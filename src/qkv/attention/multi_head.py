"""Multi-head attention: project, split into heads, :func:`qkv.attend`, merge, project back.

Covers self- and cross-attention, grouped-query / multi-query attention (``num_kv_heads``), rotary positions and a
:class:`~qkv.attention.kv_cache.KVCache` for decoding. Inputs are batch-first ``(batch, seq, embed_dim)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qkv.attention.attend import attend
from qkv.attention.block_masks import BlockMask
from qkv.attention.call import as_4d, repeat_kv
from qkv.attention.frozen import FrozenLinear, stacked_linear
from qkv.attention.hooks import HookPoint, HookPointOwner
from qkv.attention.kv_cache import KVCache
from qkv.attention.masks import Window
from qkv.attention.mods import MaskMod, ScoreMod
from qkv.attention.positional import RotaryEmbedding
from qkv.attention.scores import ScoreFunction, make_score, resolve_score
from qkv.attention.softmax import safe_softmax
from qkv.attention.weights import attention_scores, attention_weights
from qkv.errors import ConfigError, MaskError, ShapeError, describe_shape

__all__ = ["MultiHeadAttention", "attention_modules", "named_attention_modules"]

_PARAMETER_FREE_SCORES = {"dot", "scaled_dot", "cosine"}


class MultiHeadAttention(HookPointOwner):
    """Multi-head attention with W_Q, W_K, W_V, W_O.

    Args:
        embed_dim: model width; queries are ``(batch, q_len, embed_dim)``.
        num_heads: query heads; ``head_dim = embed_dim // num_heads``.
        num_kv_heads: key/value heads (default ``num_heads``); 1 is multi-query attention, anything dividing
            ``num_heads`` is grouped-query attention.
        kdim: feature size of the keys for cross-attention (default ``embed_dim``).
        vdim: feature size of the values for cross-attention (default ``embed_dim``).
        proj_bias: biases in the four projections (``bias`` in ``forward`` is the attention bias, a tensor).
        dropout: attention-weight dropout while training.
        score: score name or module; parametric scores (``general``, ``additive``) are built per module with
            ``head_dim`` and shared by the heads. ``location`` needs ``score_kwargs={"max_len": ...}``.
        rotary: apply RoPE to queries and keys of self-attention (positions continue after a cache's contents);
            a :class:`RotaryEmbedding` to use that one (e.g. with scaling), ``True`` for one with ``rotary_base``.
        out_proj_bias: a bias in the output projection (default: as ``proj_bias``; Qwen2 has q/k/v biases but none
            here).
        backend: passed to :func:`qkv.attend`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        proj_bias: bool = True,
        dropout: float = 0.0,
        score: str | ScoreFunction = "scaled_dot",
        score_kwargs: dict[str, int] | None = None,
        rotary: bool | RotaryEmbedding = False,
        rotary_base: float = 10000.0,
        out_proj_bias: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or embed_dim % num_heads:
            raise ConfigError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ConfigError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.backend = dropout, backend
        kv_width = num_kv_heads * self.head_dim
        # FrozenLinear: nn.Linear, with a decoding-friendly weight layout inside frozen_weights()
        self.q_proj = FrozenLinear(embed_dim, embed_dim, bias=proj_bias)
        self.k_proj = FrozenLinear(self.kdim, kv_width, bias=proj_bias)
        self.v_proj = FrozenLinear(self.vdim, kv_width, bias=proj_bias)
        out_bias = proj_bias if out_proj_bias is None else out_proj_bias
        self.out_proj = FrozenLinear(embed_dim, embed_dim, bias=out_bias)
        if isinstance(score, str) and score not in _PARAMETER_FREE_SCORES:
            kwargs = {"q_dim": self.head_dim, **(score_kwargs or {})}
            score = make_score(score, **kwargs)
        self.score = resolve_score(score)
        self.rotary: RotaryEmbedding | None = None
        if isinstance(rotary, RotaryEmbedding):
            if rotary.head_dim != self.head_dim:
                raise ConfigError(
                    f"the rotary embedding is for head_dim {rotary.head_dim}, the heads have {self.head_dim}"
                )
            self.rotary = rotary
        elif rotary:
            self.rotary = RotaryEmbedding(self.head_dim, base=rotary_base)
        # hook points (qkv.attention.hooks), TransformerLens's names; values are (batch, heads, seq, ...)
        self.hook_q, self.hook_k, self.hook_v = (HookPoint(head_axis=1, position_axis=2) for _ in range(3))
        if self.rotary is not None:  # (TransformerLens has them only where positions rotate Q and K)
            self.hook_rot_q, self.hook_rot_k = HookPoint(head_axis=1, position_axis=2), HookPoint(1, 2)
        self.hook_attn_scores = HookPoint(head_axis=1, position_axis=2)  # (batch, heads, q_len, k_len)
        self.hook_pattern = HookPoint(head_axis=1, position_axis=2)  # (batch, heads, q_len, k_len)
        self.hook_z = HookPoint(head_axis=1, position_axis=2)  # each head's output before W_O

    def _split(self, x: Tensor, heads: int) -> Tensor:
        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        b, n, _ = x.shape
        return x.reshape(b, n, heads, self.head_dim).transpose(1, 2)

    def _project(self, query: Tensor, key: Tensor, value: Tensor, is_self: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V split into heads: ``(batch, heads | kv_heads, seq, head_dim)``."""
        if is_self:
            # one matmul with the three weights stacked is faster than three small ones (same numbers); while
            # decoding (frozen_weights) the stack is kept, transposed for fast vector-matrix products
            qkv = stacked_linear(query, self, "qkv", (self.q_proj, self.k_proj, self.v_proj))
            if self.num_kv_heads == self.num_heads:  # (3 ops where splitting, then splitting heads, took 7)
                b, n, _ = qkv.shape
                q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                return q, k, v
            kv_width = self.num_kv_heads * self.head_dim
            q, k, v = qkv.split([self.embed_dim, kv_width, kv_width], dim=-1)
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        return self._split(q, self.num_heads), self._split(k, self.num_kv_heads), self._split(v, self.num_kv_heads)

    def project_memory(self, key: Tensor, value: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of a fixed memory (an encoded source), ``(batch, kv_heads, len, head_dim)`` each: project
        them once and pass them as ``forward(query, memory_kv=...)`` at every decoding step."""
        self._check_input("key", key, self.kdim)
        value = key if value is None else value
        self._check_input("value", value, self.vdim)
        k, v = self.k_proj(key), self.v_proj(value)
        return self._split(k, self.num_kv_heads), self._split(v, self.num_kv_heads)

    def _check_input(self, name: str, x: Tensor, width: int) -> None:
        if x.dim() != 3 or x.shape[-1] != width:
            raise ShapeError(
                f"{name} must be (batch, seq, {width}), got {describe_shape(x.shape)}"
                + ("; did you forget the batch dim?" if x.dim() == 2 else "")
            )

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        causal: bool = False,
        window: Window | None = None,
        bias: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        rotary_angles: tuple[Tensor, Tensor] | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        return_weights: bool = False,
        mask_mod: MaskMod | None = None,
        score_mod: ScoreMod | None = None,
        block_mask: BlockMask | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query (batch, q_len, embed_dim)`` to ``key``/``value`` (default: the query itself).

        Args:
            mask: bool, broadcastable to ``(batch, heads, q_len, k_len)``, True = may attend.
            key_mask: bool ``(batch, k_len)``, True = a real token that may be attended, False = padding (the
                opposite of ``torch.nn.MultiheadAttention``'s ``key_padding_mask``: pass ``~key_padding_mask``).
            causal: as in :func:`qkv.attend` (so are ``window``, ``bias``, ``mask_mod``, ``score_mod`` and
                ``block_mask``; their indices count keys from the start of the cache).
            cache: self-attention only: new keys/values are appended to layer ``layer_idx`` of the cache and the
                queries attend over everything cached (``causal`` stays aligned to the end).
            rotary_angles: ``(cos, sin)`` from :meth:`RotaryEmbedding.angles` of these queries' positions
                (``mha.rotary.angles(positions)``; a model computes them once for all its layers). Default: the
                positions continue after the cache.
            memory_kv: cross-attention to keys and values already projected by :meth:`project_memory` (instead
                of ``key``/``value``).
            return_weights: also return per-head weights ``(batch, heads, q_len, k_len)``.

        Returns:
            ``(out (batch, q_len, embed_dim), weights or None)``.
        """
        self._check_input("query", query, self.embed_dim)
        is_self = key is None and memory_kv is None
        if cache is not None and not is_self:
            raise ConfigError("the KV cache serves self-attention; for cross-attention compute the keys once instead")
        if memory_kv is not None:
            if key is not None or value is not None:
                raise ConfigError("memory_kv replaces key and value: pass one or the other")
            q, (k, v) = self._split(self.q_proj(query), self.num_heads), memory_kv
        else:
            key = query if key is None else key
            value = key if value is None else value
            if not is_self:  # self-attention's keys and values are the query, already checked
                self._check_input("key", key, self.kdim)
                self._check_input("value", value, self.vdim)
            q, k, v = self._project(query, key, value, is_self)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.rotary is not None and is_self:
            if rotary_angles is not None:
                q, k = self.rotary.rotate(q, *rotary_angles), self.rotary.rotate(k, *rotary_angles)
            else:  # positions continue after the cache (ours: no check, which would read back to the host)
                start = cache.seq_len(layer_idx) if cache is not None else 0
                positions = torch.arange(start, start + q.shape[2], device=q.device)
                q, k = self.rotary.rotate_pair(q, k, positions, trusted=True)
            q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        mask = self._merge_padding(mask, key_mask, query.shape[0], k.shape[2])
        out, weights = attend(
            q,
            k,
            v,
            mask,
            causal=causal,
            window=window,
            bias=bias,
            score=self.score,
            dropout=self.dropout if self.training else 0.0,
            backend=self.backend,
            return_weights=return_weights,
            mask_mod=mask_mod,
            score_mod=score_mod,
            block_mask=block_mask,
        )
        if self.hook_attn_scores.active or self.hook_pattern.active:
            masking = {"mask": mask, "causal": causal, "window": window, "bias": bias, "mask_mod": mask_mod,
                       "score_mod": score_mod, "block_mask": block_mask}  # fmt: skip
            out = self._hooked_pattern(q, k, v, out, masking)
        out = self.hook_z(out)
        # (batch, heads, q_len, head_dim) -> (batch, q_len, embed_dim)
        out = out.transpose(1, 2).reshape(query.shape[0], q.shape[2], self.embed_dim)
        return self.out_proj(out), weights

    def _hooked_pattern(self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, masking: dict[str, Any]) -> Tensor:
        """Show the scores and the pattern to their hook points, recomputed exactly from this call's Q and K (the
        fast backends never materialise them), and when a hook changes either, the heads' outputs
        ``(batch, heads, q_len, head_dim)`` from the changed pattern (``pattern · V``, no dropout; gradients reach
        V but not Q and K through a changed pattern). Unchanged, the backend's outputs stand."""
        changed = False
        if self.hook_attn_scores.active:
            scores = attention_scores(q, k, score=self.score, **masking)  # fp32, masked keys -inf
            hooked = self.hook_attn_scores(scores)
            changed = hooked is not scores
            weights = safe_softmax(hooked) if changed else attention_weights(q, k, score=self.score, **masking)
        else:
            weights = attention_weights(q, k, score=self.score, **masking)
        pattern = self.hook_pattern(weights)
        if not changed and pattern is weights:
            return out
        return (pattern.to(v.dtype) @ repeat_kv(v, self.num_heads // self.num_kv_heads)).to(out.dtype)

    @staticmethod
    def _merge_padding(mask: Tensor | None, key_mask: Tensor | None, batch: int, k_len: int) -> Tensor | None:
        if key_mask is None:
            return mask
        if key_mask.dtype != torch.bool or key_mask.shape != (batch, k_len):
            raise MaskError(
                f"key_mask must be bool (batch, k_len) = ({batch}, {k_len}) with True = real token, got "
                f"{key_mask.dtype} {describe_shape(key_mask.shape)}"
            )
        padding = key_mask[:, None, None, :]
        return padding if mask is None else as_4d(mask) & padding


def named_attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """The model's attention modules with their paths (``blocks.3.attn``), in definition order: the layer order
    of qkv's models (an encoder-decoder lists its encoder's, then per decoder layer self- and cross-attention)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def attention_modules(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's attention modules in definition order (see :func:`named_attention_modules`)."""
    return [m for _, m in named_attention_modules(model)]
