"""Positional information: sinusoidal and learned embeddings, rotary embeddings (RoPE), and the ALiBi bias.

Absolute encodings map positions ``(seq,)`` or ``(batch, seq)`` to vectors ``(..., dim)`` that a model adds to its
token embeddings. RoPE rotates query/key vectors ``(batch, heads, seq, head_dim)`` by position-dependent angles.
ALiBi is an additive attention bias ``(1, heads, q_len, k_len)`` for :func:`qkv.attend`'s ``bias=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.errors import ConfigError, ShapeError

__all__ = [
    "LearnedPositions",
    "RopeScaling",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "alibi_bias",
    "alibi_slopes",
    "rope_inv_freq",
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
    """Fixed sinusoidal encodings of "Attention Is All You Need"; ``forward(positions) -> (..., dim)``. Arguments
    in the order of :class:`LearnedPositions` and ``nn.Embedding``: how many positions, then the width."""

    table: Tensor  # (max_seq_len, dim), a buffer

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.register_buffer("table", sinusoidal_table(max_seq_len, dim), persistent=False)

    def forward(self, positions: Tensor, *, trusted: bool = False) -> Tensor:
        """``trusted`` positions (made by qkv) skip the range check, which reads values back to the host."""
        if not trusted:
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

    def forward(self, positions: Tensor, *, trusted: bool = False) -> Tensor:
        """``trusted`` positions (made by qkv) skip the range check, which reads values back to the host."""
        if not trusted:
            _check_positions(positions, self.max_seq_len, "learned")
        return self.embedding(positions)

    def span(self, start: int, length: int) -> Tensor:
        """Embeddings of positions ``start .. start + length - 1``: ``(length, dim)`` (a slice, no gather)."""
        _check_span(start, length, self.max_seq_len, "learned")
        return self.embedding.weight[start : start + length]


ROPE_SCALINGS = ("linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How a rotary embedding is stretched beyond the context it was trained on (the Llama family's
    ``rope_scaling``): ``linear`` divides every frequency by ``factor``; ``dynamic`` (NTK) raises the base once a
    sequence is longer than ``original_max_seq_len``; ``llama3`` divides low frequencies by ``factor``, keeps high
    ones and blends in between (``low_freq_factor``, ``high_freq_factor``)."""

    kind: str
    factor: float
    original_max_seq_len: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ConfigError(f"unknown rope scaling {self.kind!r}; choose one of {', '.join(ROPE_SCALINGS)}")
        if not self.factor > 0:
            raise ConfigError(f"rope scaling factor must be > 0, got {self.factor}")
        if self.kind in ("dynamic", "llama3") and self.original_max_seq_len < 1:
            raise ConfigError(f"{self.kind} rope scaling needs the original context length (>= 1)")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


def rope_inv_freq(head_dim: int, base: float | Tensor, scaling: RopeScaling | None = None) -> Tensor:
    """Inverse frequencies ``(head_dim / 2,)`` in fp32, ``1 / base^(2i / head_dim)``, then scaled.

    Computed in fp32 with the operations of the reference Llama implementation (HuggingFace's), so a model loaded
    from its checkpoints rotates by exactly the angles it was trained with.
    """
    device = base.device if isinstance(base, Tensor) else None
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (base**exponents)
    if scaling is None or scaling.kind == "dynamic":
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    old = scaling.original_max_seq_len  # llama3
    low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021).

    Feature pair ``i`` of a vector at position ``p`` is rotated by the angle ``p · base^(-2i/head_dim)``. The pairs are
    ``(x[i], x[i + head_dim/2])`` ("half" layout, as in GPT-NeoX and LLaMA), or ``(x[2i], x[2i+1])`` with
    ``interleaved=True`` (the paper's and GPT-J's layout). ``scaling`` stretches it to longer contexts
    (:class:`RopeScaling`). Angles are computed in fp32 or wider, whatever the model's dtype.
    """

    inv_freq: Tensor  # (head_dim / 2,), a buffer

    def __init__(
        self, head_dim: int, base: float = 10000.0, interleaved: bool = False, scaling: RopeScaling | None = None
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary embeddings need an even head_dim, got {head_dim}")
        self.head_dim, self.base, self.interleaved, self.scaling = head_dim, base, interleaved, scaling
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base, scaling), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        # model.to(bf16) would round the frequencies to 3 digits (angles off by up to 0.4%): keep them in fp32
        super()._apply(fn, recurse)
        if self.inv_freq.dtype not in (torch.float32, torch.float64):
            self.inv_freq = rope_inv_freq(self.head_dim, self.base, self.scaling).to(self.inv_freq.device)
        return self

    def _dynamic_inv_freq(self, positions: Tensor) -> Tensor:
        """NTK-aware frequencies for sequences as long as ``positions`` reach (no read back to the host)."""
        assert self.scaling is not None
        original, factor, dim = self.scaling.original_max_seq_len, self.scaling.factor, self.head_dim
        length = torch.clamp(positions.max() + 1, min=original)
        base = self.base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return rope_inv_freq(dim, base)

    def angles(self, positions: Tensor, trusted: bool = False) -> tuple[Tensor, Tensor]:
        """cos and sin ``(..., seq, head_dim / 2)`` for integer positions ``(..., seq)``; ``trusted`` positions (made
        by qkv itself, e.g. from the cache length) skip the check, which reads values back to the host."""
        if not trusted:
            _check_positions(positions, None, "rotary")
        inv_freq = self.inv_freq
        if self.scaling is not None and self.scaling.kind == "dynamic":
            inv_freq = self._dynamic_inv_freq(positions).to(inv_freq.dtype)
        theta = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq
        return theta.cos(), theta.sin()

    def forward(self, x: Tensor, positions: Tensor, *, trusted: bool = False) -> Tensor:
        """Rotate ``x (batch, heads, seq, head_dim)``; ``positions`` is ``(seq,)`` or ``(batch, seq)`` (``trusted``:
        see :meth:`angles`)."""
        return self.rotate(x, *self.angles(positions, trusted))

    def rotate_pair(self, q: Tensor, k: Tensor, positions: Tensor, *, trusted: bool = False) -> tuple[Tensor, Tensor]:
        """``(forward(q), forward(k))`` at the same positions, the angles computed once."""
        cos, sin = self.angles(positions, trusted)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate ``x (batch, heads, seq, head_dim)`` by the angles of :meth:`angles`."""
        if x.shape[-1] != self.head_dim:
            raise ShapeError(f"rotary embedding built for head_dim={self.head_dim}, got vectors of size {x.shape[-1]}")
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
