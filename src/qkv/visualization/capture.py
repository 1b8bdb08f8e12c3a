"""``qkv.capture_attention``: the exact attention weights of any qkv model, while it runs on its fast backend.

Only the requested layers recompute their weights, from the very Q and K the layer used (after rotary positions, with
the cache's keys); the forward pass itself is untouched, so outputs are identical with or without a capture.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from qkv.attention.multi_head import MultiHeadAttention
from qkv.attention.weights import attention_scores, attention_weights
from qkv.decoding.trace import BEAM_OBSERVER
from qkv.errors import ConfigError

__all__ = ["AttentionCapture", "capture_attention"]


@dataclass
class AttentionCapture:
    """What a capture recorded, per layer index (the order of the model's attention modules)."""

    layers: list[int]
    heads: list[int] | None
    calls: dict[int, list[Tensor]] = field(default_factory=dict)  # weights (batch, heads, q, k) per forward call
    queries: dict[int, list[Tensor]] = field(default_factory=dict)  # q (batch, heads, q, head_dim) per call
    keys: dict[int, list[Tensor]] = field(default_factory=dict)  # k (batch, kv_heads, k, head_dim) per call
    options: dict[int, list[dict]] = field(default_factory=dict)  # mask, causal, window, bias, score per call
    beam_rows: list[Tensor] | None = None  # after a beam search: per call, the rows of the chosen hypotheses

    def weights(self, layer: int) -> Tensor:
        """All rows recorded for ``layer``: ``(batch, heads, total_q, max_k)``.

        Successive calls (decoding steps on a KV cache) append their query rows; keys a row could not see yet are 0.
        """
        return self._rows(layer, self.calls.get(layer), fill=0.0)

    def scores(self, layer: int) -> Tensor:
        """What the softmax of ``layer`` received, laid out as :meth:`weights`: ``(batch, heads, total_q, max_k)``
        in fp32, the scaled score plus any bias, ``-inf`` at keys the layer's mask, causal rule or window forbade
        (and at keys a row could not see yet). Recomputed on demand from the recorded Q and K: materialised, so
        meant for short inputs."""
        parts = [
            attention_scores(q, k, heads=self.heads, **options)
            for q, k, options in zip(self.queries.get(layer, []), self.keys.get(layer, []), self.options.get(layer, []))
        ]
        return self._rows(layer, parts, fill=float("-inf"))

    def _rows(self, layer: int, parts: list[Tensor] | None, fill: float) -> Tensor:
        if not parts:
            raise ConfigError(f"nothing was captured for layer {layer}; captured layers: {sorted(self.calls)}")
        if self.beam_rows is not None:  # follow the winning beam of each batch item through the reorderings
            parts = [_pick_rows(p, rows, fill) for p, rows in zip(parts, self.beam_rows)]
        width = max(p.shape[-1] for p in parts)
        padded = [torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=fill) for p in parts]
        return torch.cat(padded, dim=2)

    def all_layers(self) -> list[Tensor]:
        return [self.weights(layer) for layer in self.layers if self.calls.get(layer)]


def _pick_rows(values: Tensor, rows: Tensor, fill: float) -> Tensor:
    """Batch rows ``rows`` of ``values``; -1 (a hypothesis that had already ended) gives ``fill``."""
    picked = values.index_select(0, rows.clamp(min=0))
    return picked.masked_fill((rows < 0).view(-1, 1, 1, 1), fill)


def attention_modules(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's attention modules in definition order (= layer order for qkv models)."""
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


@contextmanager
def capture_attention(
    model: nn.Module, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Iterator[AttentionCapture]:
    """Record exact attention weights of ``layers`` (default: all) and ``heads`` (default: all) of ``model``.

    ``with qkv.capture_attention(model, layers=[0, 3]) as cap: model(ids)`` then ``cap.weights(3)`` is
    ``(batch, heads, q, k)``. Works with padding, batches, cross-attention and KV-cache decoding (rows accumulate);
    after a beam search, ``weights`` follows the chosen beam of each batch item.
    """
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no qkv MultiHeadAttention modules to capture")
    chosen = list(range(len(modules))) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not -len(modules) <= i < len(modules)]
    if bad:
        raise ConfigError(f"layers {bad} do not exist: the model has {len(modules)} attention layers")
    chosen = [i % len(modules) for i in chosen]
    capture = AttentionCapture(chosen, list(heads) if heads is not None else None)
    previous = {i: modules[i].capture for i in chosen}

    def recorder(index: int):  # noqa: ANN202
        def record(q: Tensor, k: Tensor, **kwargs: object) -> None:
            w = attention_weights(q.detach(), k.detach(), heads=capture.heads, **kwargs)  # type: ignore[arg-type]
            capture.calls.setdefault(index, []).append(w)
            capture.queries.setdefault(index, []).append(q.detach())
            capture.keys.setdefault(index, []).append(k.detach())
            capture.options.setdefault(index, []).append(kwargs)

        return record

    def on_beam_search(rows: list[Tensor]) -> None:
        capture.beam_rows = rows

    for i in chosen:
        modules[i].capture = recorder(i)
    token = BEAM_OBSERVER.set(on_beam_search)
    try:
        yield capture
    finally:
        BEAM_OBSERVER.reset(token)
        for i in chosen:
            modules[i].capture = previous[i]
