"""The pieces models really share: normalisation (LayerNorm, RMSNorm), the feed-forward networks (an MLP, SwiGLU)
and the pre-norm residual block that GPT-2- and Llama-style decoders are made of."""

from __future__ import annotations

import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.block_masks import BlockMask
from qkv.attention.frozen import FrozenLinear, linear_pair
from qkv.attention.hooks import DirectCall, HookPointOwner, block_hook_points
from qkv.attention.kv_cache import KVCache
from qkv.attention.mods import MaskMod, ScoreMod
from qkv.attention.multi_head import MultiHeadAttention
from qkv.attention.positional import RotaryEmbedding
from qkv.errors import ConfigError, ShapeError

__all__ = [
    "ACTIVATIONS",
    "FEED_FORWARDS",
    "NORMS",
    "FeedForward",
    "LayerNorm",
    "NoDropout",
    "PreNormBlock",
    "RMSNorm",
    "SwiGLU",
    "dropout_layer",
]

Activation = Literal["gelu", "gelu_tanh", "relu"]
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
}


class NoDropout(DirectCall, nn.Identity):
    """The identity where a model has no dropout: its calls cost what a function call costs (:class:`DirectCall`)."""


def dropout_layer(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or a no-op module when ``p == 0`` (saves a call per layer and token when decoding)."""
    return nn.Dropout(p) if p > 0 else NoDropout()


class LayerNorm(DirectCall, nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, same checkpoints), called directly when unhooked (:class:`DirectCall`)."""

    def forward(self, x: Tensor) -> Tensor:
        # torch.layer_norm itself, the op F.layer_norm ends in (which also dispatches tensor subclasses): the
        # functional's wrapper doubled a norm's cost in a one-token decoding step (10.9 vs 4.7 us)
        return torch.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class FeedForward(DirectCall):
    """``(batch, seq, dim) -> (batch, seq, dim)``: Linear, activation, Linear, dropout."""

    def __init__(
        self, dim: int, hidden_dim: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.up = FrozenLinear(dim, hidden_dim, bias=bias)
        self.down = FrozenLinear(hidden_dim, dim, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.dropout = dropout_layer(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


class SwiGLU(DirectCall):
    """``(batch, seq, dim) -> (batch, seq, dim)``: ``down(silu(gate(x)) * up(x))`` (Shazeer 2020; Llama's MLP)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=bias)
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = FrozenLinear(hidden_dim, dim, bias=bias)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = linear_pair(x, self.gate, self.up)  # (one product while decoding)
        return self.dropout(self.down(F.silu(gate) * up))


class RMSNorm(DirectCall):
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dim (Zhang & Sennrich 2019), computed in fp32 or wider
    and returned in the input's dtype before the scale (as the Llama family defines it)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = F.rms_norm(x.to(torch.promote_types(x.dtype, torch.float32)), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


Norm = Literal["layer", "rms"]
FeedForwardKind = Literal["mlp", "swiglu"]
NORMS: tuple[str, ...] = typing.get_args(Norm)
FEED_FORWARDS: tuple[str, ...] = typing.get_args(FeedForwardKind)


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """``"layer"``: LayerNorm (with a bias when ``bias``); ``"rms"``: :class:`RMSNorm`."""
    return LayerNorm(dim, eps=eps, bias=bias) if kind == "layer" else RMSNorm(dim, eps)


class PreNormBlock(HookPointOwner):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))``, causal self-attention: GPT-2's block with the defaults;
    Llama's with ``norm="rms"``, ``feed_forward="swiglu"``, ``linear_bias=False`` and a rotary embedding (Qwen2 adds
    ``qkv_bias``; Mistral a ``window``, the number of keys each query sees, itself included)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None,
        hidden_dim: int,
        *,
        activation: str = "gelu",
        dropout: float = 0.0,
        linear_bias: bool = True,
        norm_eps: float = 1e-5,
        rotary: bool | RotaryEmbedding = False,
        backend: str = "auto",
        norm: str = "layer",
        feed_forward: str = "mlp",
        qkv_bias: bool | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.window = window
        self.norm1 = make_norm(norm, dim, norm_eps, linear_bias)
        self.attn = MultiHeadAttention(
            dim,
            num_heads,
            num_kv_heads,
            proj_bias=linear_bias if qkv_bias is None else qkv_bias,
            out_proj_bias=linear_bias,
            dropout=dropout,
            rotary=rotary,
            backend=backend,
        )
        self.norm2 = make_norm(norm, dim, norm_eps, linear_bias)
        self.ffn: nn.Module = (
            FeedForward(dim, hidden_dim, activation, dropout, linear_bias)
            if feed_forward == "mlp"
            else SwiGLU(dim, hidden_dim, dropout, linear_bias)
        )
        self.resid_dropout = dropout_layer(dropout)
        # hook points (qkv.attention.hooks): the residual stream and what each sublayer adds to it
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out, self.hook_resid_post = (
            block_hook_points()
        )

    def forward(
        self,
        x: Tensor,
        *,
        bias: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        rotary_angles: tuple[Tensor, Tensor] | None = None,
        return_weights: bool = False,
        mask_mod: MaskMod | None = None,
        score_mod: ScoreMod | None = None,
        block_mask: BlockMask | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)
        attended, weights = self.attn(
            self.norm1(x),
            causal=True,
            window=self.window,
            bias=bias,
            mask=mask,
            cache=cache,
            layer_idx=layer_idx,
            rotary_angles=rotary_angles,
            return_weights=return_weights,
            mask_mod=mask_mod,
            score_mod=score_mod,
            block_mask=block_mask,
        )
        x = self.hook_resid_mid(x + self.resid_dropout(self.hook_attn_out(attended)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.ffn(self.norm2(x)))), weights


def start_residual(embedded: Tensor, start_at_layer: int, residual: Tensor | None, layers: int) -> Tensor:
    """The residual stream a forward pass starts from: ``embedded``, or with ``start_at_layer = L > 0``
    (TransformerLens's argument) ``residual``, the stream entering layer L, ``(batch, seq, dim)`` like ``embedded``:
    layers before L are skipped (what analyses that change only layer L and later need)."""
    if start_at_layer == 0:
        return embedded
    if not 0 < start_at_layer < layers:
        raise ConfigError(f"start_at_layer must be in [0, {layers}), got {start_at_layer}")
    if residual is None or residual.shape != embedded.shape:
        got = "none" if residual is None else str(tuple(residual.shape))
        raise ShapeError(
            f"start_at_layer={start_at_layer} needs residual, the stream entering that layer, of shape "
            f"{tuple(embedded.shape)}; got {got}"
        )
    return residual
