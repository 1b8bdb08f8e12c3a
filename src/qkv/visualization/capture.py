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
from qkv.errors import ConfigError, ShapeError, describe_shape

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

    def weights(self, layer: int, beam_indices: Tensor | None = None) -> Tensor:
        """All rows recorded for ``layer``: ``(batch, heads, total_q, max_k)``.

        Successive calls (decoding steps on a KV cache) append their query rows; keys a row could not see yet are 0.
        After a beam search, pass its ``beam_indices`` (``qkv.generate(..., return_dict=True).beam_indices``,
        ``(rows, new)``) to follow each returned hypothesis through the beams' reorderings: one row per hypothesis.
        """
        return self._rows(layer, self.calls.get(layer), 0.0, beam_indices)

    def scores(self, layer: int, beam_indices: Tensor | None = None) -> Tensor:
        """What the softmax of ``layer`` received, laid out as :meth:`weights`: ``(batch, heads, total_q, max_k)``
        in fp32, the scaled score plus any bias, ``-inf`` at keys the layer's mask, causal rule or window forbade
        (and at keys a row could not see yet). Recomputed on demand from the recorded Q and K: materialised, so
        meant for short inputs."""
        parts = [
            attention_scores(q, k, heads=self.heads, **options)
            for q, k, options in zip(self.queries.get(layer, []), self.keys.get(layer, []), self.options.get(layer, []))
        ]
        return self._rows(layer, parts, float("-inf"), beam_indices)

    def _rows(self, layer: int, parts: list[Tensor] | None, fill: float, beam_indices: Tensor | None) -> Tensor:
        if not parts:
            raise ConfigError(f"nothing was captured for layer {layer}; captured layers: {sorted(self.calls)}")
        if beam_indices is not None:  # call c chose step c's token: its rows are the hypotheses' rows at step c
            if beam_indices.dim() != 2 or beam_indices.shape[1] > len(parts):
                raise ShapeError(
                    f"beam_indices must be (rows, steps) with at most {len(parts)} steps (the model calls "
                    f"recorded), got {describe_shape(beam_indices.shape)}"
                )
            steps = beam_indices.to(parts[0].device).unbind(1)
            parts = [_pick_rows(p, rows, fill) for p, rows in zip(parts, steps)]
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
    after a beam search, ``weights(layer, beam_indices)`` follows each returned hypothesis.
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

    for i in chosen:
        modules[i].capture = recorder(i)
    try:
        yield capture
    finally:
        for i in chosen:
            modules[i].capture = previous[i]
