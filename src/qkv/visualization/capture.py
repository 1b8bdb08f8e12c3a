"""``qkv.capture_attention``: the exact attention weights of any qkv model, while it runs on its fast backend.

Built on the attention modules' hook points (``hook_pattern``, ``hook_attn_scores`` when scores are asked for, and
``hook_q``/``hook_rot_q``, ``hook_k``/``hook_rot_k``, ``hook_v`` and ``hook_z`` when vectors are):
only the requested layers compute their weights, from the very Q and K the layer used (after rotary positions, with
the cache's keys); the forward pass itself is untouched, so outputs are identical with or without a capture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qkv.attention.multi_head import MultiHeadAttention, attention_modules, named_attention_modules
from qkv.attention.scores import DotScore
from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.visualization.html import NeuronVectors

__all__ = ["AttentionCapture", "attention_modules", "capture_attention"]


@dataclass
class AttentionCapture:
    """What a capture recorded, per layer index (the order of the model's attention modules; ``names[layer]`` is
    that module's path, whose hook points are ``names[layer] + ".hook_pattern"`` and so on)."""

    layers: list[int]
    heads: list[int] | None
    names: dict[int, str] = field(default_factory=dict)
    calls: dict[int, list[Tensor]] = field(default_factory=dict)  # weights (batch, heads, q, k) per forward call
    score_calls: dict[int, list[Tensor]] = field(default_factory=dict)  # the softmax's input, the same layout
    # per layer, hook name ("q", "k", "v", "z") -> (batch, heads, n, head_dim) per call, k and v one per query head
    vector_calls: dict[int, dict[str, list[Tensor]]] = field(default_factory=dict)
    vector_hooks: dict[int, dict[str, str]] = field(default_factory=dict)  # which hook point gave q and k
    scales: dict[int, float | None] = field(default_factory=dict)  # the dot-product score's multiplier per layer

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
        (and at keys a row could not see yet). Recorded when the capture was made with ``scores=True``
        (materialised: meant for short inputs)."""
        if layer in self.calls and layer not in self.score_calls:
            raise ConfigError("the scores were not recorded: capture with qkv.capture_attention(..., scores=True)")
        return self._rows(layer, self.score_calls.get(layer), float("-inf"), beam_indices)

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
        """:meth:`weights` of every captured layer that ran, in layer order."""
        return [self.weights(layer) for layer in self.layers if self.calls.get(layer)]

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook, the explorer of batch row 0, keys labelled by position; ``qkv.show(capture, tokens)`` puts
        the tokens on them."""
        from qkv.visualization.kinds import attention_kinds
        from qkv.visualization.widget import Explorer

        return Explorer.of(attention_kinds(self, None), title="captured attention")._repr_mimebundle_()

    def vectors(self, layers: Sequence[int] | None = None, row: int = 0) -> NeuronVectors | None:
        """The neuron view's numbers for batch row ``row`` of ``layers`` (default: every captured layer that ran):
        q and k as they entered the dot product, v and z, per layer ``(heads, n, head_dim)`` (successive calls,
        decoding steps on a KV cache, appended). Recorded when the capture was made with ``vectors=True``; ``None``
        when a layer's score is not a dot product (cosine, general, additive: q·k is not what the softmax saw)."""
        chosen = [i for i in self.layers if self.calls.get(i)] if layers is None else list(layers)
        missing = [i for i in chosen if i not in self.vector_calls]
        if missing:
            raise ConfigError(f"no vectors were recorded for layers {missing}: capture with "
                              "qkv.capture_attention(..., vectors=True)")  # fmt: skip
        scales = {self.scales[i] for i in chosen}
        if None in scales or len(scales) != 1:
            return None
        parts = {name: [torch.cat(self.vector_calls[i][name], dim=2)[row] for i in chosen] for name in "qkvz"}
        return NeuronVectors(**parts, scale=scales.pop(), hooks=self.vector_hooks[chosen[0]])  # type: ignore[arg-type]


def _pick_rows(values: Tensor, rows: Tensor, fill: float) -> Tensor:
    """Batch rows ``rows`` of ``values``; -1 (a hypothesis that had already ended) gives ``fill``."""
    picked = values.index_select(0, rows.clamp(min=0))
    return picked.masked_fill((rows < 0).view(-1, 1, 1, 1), fill)


@contextmanager
def capture_attention(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    *,
    scores: bool = False,
    vectors: bool = False,
) -> Iterator[AttentionCapture]:
    """Record exact attention weights of ``layers`` (default: all) and ``heads`` (default: all) of ``model``.

    ``with qkv.capture_attention(model, layers=[0, 3]) as cap: model(ids)`` then ``cap.weights(3)`` is
    ``(batch, heads, q, k)``. Works with padding, batches, cross-attention and KV-cache decoding (rows accumulate);
    after a beam search, ``weights(layer, beam_indices)`` follows each returned hypothesis. ``scores=True`` also
    records what each softmax received (:meth:`AttentionCapture.scores`), ``vectors=True`` the hook points' q, k, v
    and z for the neuron view (:meth:`AttentionCapture.vectors`).
    """
    named = named_attention_modules(model)
    if not named:
        raise ConfigError(f"{type(model).__name__} has no qkv MultiHeadAttention modules to capture")
    chosen = list(range(len(named))) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not -len(named) <= i < len(named)]
    if bad:
        raise ConfigError(f"layers {bad} do not exist: the model has {len(named)} attention layers")
    chosen = [i % len(named) for i in chosen]
    selected = list(heads) if heads is not None else None
    fewest = min(named[i][1].num_heads for i in chosen)
    if selected is not None and (not selected or min(selected) < 0 or max(selected) >= fewest):
        raise ConfigError(f"heads must be indices in [0, {fewest}), got {selected}")
    capture = AttentionCapture(chosen, selected, {i: named[i][0] for i in chosen})

    def keeper(store: dict[Any, list[Tensor]], index: Any, group: int = 1) -> Callable[[nn.Module, Any, Tensor], None]:
        def keep(_module: nn.Module, _args: Any, value: Tensor) -> None:
            # grouped-query attention: one k and v per group of query heads, repeated so that head h finds its own
            value = value.detach().float().repeat_interleave(group, dim=1)
            store.setdefault(index, []).append(value if selected is None else value[:, selected])

        return keep

    with ExitStack() as stack:
        for i in chosen:
            module = named[i][1]
            stack.callback(module.hook_pattern.register_forward_hook(keeper(capture.calls, i)).remove)
            if scores:
                stack.callback(module.hook_attn_scores.register_forward_hook(keeper(capture.score_calls, i)).remove)
            if vectors:
                for point in _vector_hooks(capture, i, module):
                    stack.callback(point[0].register_forward_hook(keeper(*point[1:])).remove)
        yield capture


def _vector_hooks(capture: AttentionCapture, index: int, module: MultiHeadAttention) -> list[tuple[Any, ...]]:
    """(hook point, store, key, group) for the q, k, v and z of ``module``; q and k after rotary positions."""
    rotated = module.rotary is not None
    names = {"q": "hook_rot_q" if rotated else "hook_q", "k": "hook_rot_k" if rotated else "hook_k",
             "v": "hook_v", "z": "hook_z"}  # fmt: skip
    store = capture.vector_calls.setdefault(index, {})
    capture.vector_hooks[index] = names
    # the neuron view's steps are q·k times a scale: true of the dot and scaled-dot scores only
    capture.scales[index] = module.score.default_scale(module.head_dim) if isinstance(module.score, DotScore) else None
    group = module.num_heads // module.num_kv_heads
    return [(getattr(module, hook), store, name, group if name in "kv" else 1) for name, hook in names.items()]
