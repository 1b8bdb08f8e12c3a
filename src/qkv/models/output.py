"""What every qkv model's ``forward`` returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from qkv.attention.kv_cache import KVCache

__all__ = ["ModelOutput"]


@dataclass
class ModelOutput:
    """``logits (batch, seq, vocab)`` (or ``last_hidden_state (batch, seq, dim)`` for encoders), per-layer
    ``attentions`` ``(batch, heads, q, k)`` when asked for (else None), the ``cache`` used (or None), and per-layer
    ``hidden_states`` when asked for."""

    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None
    cache: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings, then every layer's output, when asked for
    # sequence-to-sequence models: decoder-to-source weights (batch, heads, tgt_len, src_len) per decoder layer (the
    # alignment), and the encoder's self-attention per layer
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
