"""Positional information: sinusoidal and learned embeddings, rotary embeddings (RoPE), and the ALiBi bias.

Absolute encodings map positions ``(seq,)`` or ``(batch, seq)`` to vectors ``(..., dim)`` that a model adds to its
token embeddings. RoPE rotates query/key vectors ``(batch, heads, seq, head_dim)`` by position-dependent angles.
ALiBi is an additive attention bias ``(1, heads, q_len, k_len)`` for :func:`qkv.attend`'s ``bias=``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qkv.errors import ConfigError, ShapeError

__all__ = [
    "LearnedPositions",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "alibi_bias",
    "alibi_slopes",
    "sinusoidal_table",
]


def _check_positions(positions: Tensor, limit: int | None, what: str) -> None:
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ShapeError(f"{what} positions must be integers, got dtype {positions.dtype}")
    if positions.numel() and int(positions.min()) < 0:
        raise ConfigError(f"{what} positions must be >= 0, got {int(positions.min())}")
    if limit is not None and positions.numel() and int(positions.max()) >= limit:
        raise ConfigError(
            f"{what} position {int(positions.max())} is beyond max_seq_len={limit}; shorten the input or build the "
            f"model with a larger max_seq_len"
        )


def _check_span(start: int, length: int, limit: int, what: str) -> None:
    if start < 0 or start + length > limit:
        raise ConfigError(
            f"{what} positions {start}..{start + length - 1} go beyond max_seq_len={limit}; shorten the input or "
            "build the model with a larger max_seq_len"
        )


def sinusoidal_table(max_len: int, dim: int) -> Tensor:
    """``(max_len, dim)``: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim))."""
    if dim % 2:
        raise ConfigError(f"sinusoidal positions need an even dim, got {dim}")
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal encodings of "Attention Is All You Need"; ``forward(positions) -> (..., dim)``."""

    def __init__(self, dim: int, max_seq_len: int = 4096) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.register_buffer("table", sinusoidal_table(max_seq_len, dim), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        _check_positions(positions, self.max_seq_len, "sinusoidal")
        return self.table[positions]

    def span(self, start: int, length: int) -> Tensor:
        """Encodings of positions ``start .. start + length - 1``: ``(length, dim)`` (a slice, no gather)."""
        _check_span(start, length, self.max_seq_len, "sinusoidal")
        return self.table[start : start + length]


class LearnedPositions(nn.Module):
    """A learned embedding per position (GPT-2, BERT); ``forward(positions) -> (..., dim)``."""

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embedding = nn.Embedding(max_seq_len, dim)

    def forward(self, positions: Tensor) -> Tensor:
        _check_positions(positions, self.max_seq_len, "learned")
        return self.embedding(positions)

    def span(self, start: int, length: int) -> Tensor:
        """Embeddings of positions ``start .. start + length - 1``: ``(length, dim)`` (a slice, no gather)."""
        _check_span(start, length, self.max_seq_len, "learned")
        return self.embedding.weight[start : start + length]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021).

    Feature pair ``i`` of a vector at position ``p`` is rotated by the angle ``p · base^(-2i/head_dim)``. The pairs are
    ``(x[i], x[i + head_dim/2])`` ("half" layout, as in GPT-NeoX and LLaMA), or ``(x[2i], x[2i+1])`` with
    ``interleaved=True`` (the paper's and GPT-J's layout).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary embeddings need an even head_dim, got {head_dim}")
        self.head_dim, self.base, self.interleaved = head_dim, base, interleaved
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def angles(self, positions: Tensor, trusted: bool = False) -> tuple[Tensor, Tensor]:
        """cos and sin ``(..., seq, head_dim / 2)`` for integer positions ``(..., seq)``; ``trusted`` positions (made
        by qkv itself, e.g. from the cache length) skip the check, which reads values back to the host."""
        if not trusted:
            _check_positions(positions, None, "rotary")
        theta = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        return theta.cos(), theta.sin()

    def forward(self, x: Tensor, positions: Tensor, *, trusted: bool = False) -> Tensor:
        """Rotate ``x (batch, heads, seq, head_dim)``; ``positions`` is ``(seq,)`` or ``(batch, seq)`` (``trusted``:
        see :meth:`angles`)."""
        if x.shape[-1] != self.head_dim:
            raise ShapeError(f"rotary embedding built for head_dim={self.head_dim}, got vectors of size {x.shape[-1]}")
        cos, sin = self.angles(positions, trusted)
        if cos.dim() == 3:  # (batch, seq, half) -> broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        a, b = x.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022): ``2^(-8i/n)`` for ``i = 1..n`` when n is a power of two;
    otherwise the slopes of the nearest lower power of two plus every other slope of the next one."""
    if num_heads < 1:
        raise ConfigError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest != num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    num_heads: int, q_len: int, k_len: int | None = None, device: torch.device | str | None = None
) -> Tensor:
    """ALiBi bias ``(1, heads, q_len, k_len)``: ``-slope_h · |t - j|`` with query positions aligned to the end.

    Under a causal mask this is the paper's ``slope · (j - t)``; without one it penalises distance both ways.
    """
    k_len = q_len if k_len is None else k_len
    t = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)
    j = torch.arange(k_len, device=device).unsqueeze(0)
    distance = (t - j).abs().float()
    return -alibi_slopes(num_heads).to(device)[None, :, None, None] * distance
