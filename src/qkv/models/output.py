"""What every qkv model's ``forward`` returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from qkv.attention.kv_cache import KVCache

__all__ = ["ModelOutput"]


@dataclass
class ModelOutput:
    """``logits (batch, seq, vocab)`` (or ``last_hidden_state (batch, seq, dim)`` for encoders), per-layer
    ``attentions`` ``(batch, heads, q, k)`` when asked for (else None), and the ``cache`` used (or None)."""

    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None
    cache: KVCache | None = None
