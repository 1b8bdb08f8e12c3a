"""The pieces models really share: the feed-forward network and the pre-norm residual block."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.frozen import frozen_linear
from qkv.attention.kv_cache import KVCache
from qkv.attention.multi_head import MultiHeadAttention
from qkv.errors import ConfigError

__all__ = ["ACTIVATIONS", "FeedForward", "PreNormBlock", "dropout_layer"]

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
}


def dropout_layer(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or a no-op module when ``p == 0`` (saves a call per layer and token when decoding)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class FeedForward(nn.Module):
    """``(batch, seq, dim) -> (batch, seq, dim)``: Linear, activation, Linear, dropout."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.dropout = dropout_layer(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(frozen_linear(self.activation(frozen_linear(x, self.up)), self.down))


class PreNormBlock(nn.Module):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))`` (GPT-2 style), causal self-attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None,
        hidden_dim: int,
        *,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        norm_eps: float = 1e-5,
        rotary: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.attn = MultiHeadAttention(
            dim, num_heads, num_kv_heads, bias=bias, dropout=dropout, rotary=rotary, backend=backend
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.ffn = FeedForward(dim, hidden_dim, activation, dropout, bias)
        self.resid_dropout = dropout_layer(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        bias: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        positions: Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(
            self.norm1(x),
            causal=True,
            bias=bias,
            mask=mask,
            cache=cache,
            layer_idx=layer_idx,
            positions=positions,
            return_weights=return_weights,
        )
        x = x + self.resid_dropout(attended)
        return x + self.ffn(self.norm2(x)), weights
