"""Attention rollout and attention flow (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020).

Both start from each layer's attention averaged over heads, with the residual connection added as an identity:
``Ã = 0.5 · A + 0.5 · I``, rows renormalised to sum to 1 (the paper's choice). Position ``i`` of layer ``l + 1``
draws ``Ã[i, j]`` of its value from position ``j`` of layer ``l``.

* **rollout** multiplies the layers: ``R = Ã_L · ... · Ã_1``; ``R[i, j]`` is how much input token ``j`` reaches
  output position ``i`` along all paths, each path weighted by the product of its edges.
* **flow** treats the layers as a graph whose edge ``(l, j) -> (l + 1, i)`` has capacity ``Ã_{l+1}[i, j]`` and takes
  the maximum flow from output position ``i`` down to input token ``j``: how much can get through the narrowest
  links rather than the product of them.

The attentions are the exact weights a model computed (``qkv.capture_attention`` or ``return_attention=True``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.errors import ConfigError, ShapeError, describe_shape

__all__ = ["attention_flow", "attention_rollout", "layer_transitions", "max_flow"]


def layer_transitions(attentions: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """Per-layer transition matrices ``(layers, batch, seq, seq)`` in float64 from attentions, each
    ``(batch, heads, seq, seq)``: heads averaged, ``residual · I`` added to ``(1 - residual) ·`` the average, rows
    renormalised."""
    if not attentions:
        raise ConfigError("no attention layers given")
    if not 0.0 <= residual <= 1.0:
        raise ConfigError(f"residual must be in [0, 1], got {residual}")
    shape = attentions[0].shape
    for layer, a in enumerate(attentions):
        if a.dim() != 4 or a.shape != shape or a.shape[-1] != a.shape[-2]:
            raise ShapeError(
                f"attention of layer {layer} must be (batch, heads, seq, seq) like layer 0's "
                f"{describe_shape(shape)}, got {describe_shape(a.shape)} (self-attention only)"
            )
    eye = torch.eye(shape[-1], dtype=torch.float64, device=attentions[0].device)
    steps = []
    for a in attentions:
        mixed = (1.0 - residual) * a.double().mean(dim=1) + residual * eye
        total = mixed.sum(dim=-1, keepdim=True)
        steps.append(mixed / torch.where(total > 0, total, torch.ones_like(total)))
    return torch.stack(steps)


def attention_rollout(attentions: Sequence[Tensor], residual: float = 0.5, *, every_layer: bool = False) -> Tensor:
    """``(batch, seq, seq)``: row ``i`` is how much of each input token reaches output position ``i`` (rows sum to
    1 when every layer's rows do). ``every_layer``: ``(layers, batch, seq, seq)``, the rollout through layers
    ``0..l`` for each ``l`` (the last equals the default's)."""
    transitions = layer_transitions(attentions, residual)
    rollouts = [transitions[0]]
    for step in transitions[1:]:
        rollouts.append(step @ rollouts[-1])
    return torch.stack(rollouts) if every_layer else rollouts[-1]


def attention_flow(attentions: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """``(batch, seq, seq)``: the maximum flow from output position ``i`` (top layer) to input token ``j`` through
    the layer graph. Costs one max-flow per pair: meant for the short inputs people inspect (tens of tokens)."""
    transitions = layer_transitions(attentions, residual).cpu()
    layers, batch, seq, _ = transitions.shape
    out = torch.zeros(batch, seq, seq, dtype=torch.float64)
    for b in range(batch):
        graph = _layer_graph(transitions[:, b])
        top = layers * seq
        for i in range(seq):
            for j in range(seq):
                out[b, i, j] = max_flow(graph, top + i, j)
    return out


Graph = dict[int, dict[int, float]]


def _layer_graph(transitions: Tensor) -> Graph:
    """Nodes ``l · seq + position`` for l = 0 (inputs) .. layers; edges point down, from (l+1, i) to (l, j)."""
    layers, seq, _ = transitions.shape
    graph: Graph = {node: {} for node in range((layers + 1) * seq)}
    weights = transitions.tolist()
    for layer in range(layers):
        for i in range(seq):
            for j in range(seq):
                if weights[layer][i][j] > 0:
                    graph[(layer + 1) * seq + i][layer * seq + j] = weights[layer][i][j]
    return graph


def max_flow(graph: Graph, source: int, sink: int, tolerance: float = 1e-12) -> float:
    """Maximum flow from ``source`` to ``sink`` of a graph ``{node: {neighbour: capacity}}`` (Edmonds-Karp:
    augmenting paths found breadth-first, so the number of rounds is bounded whatever the capacities)."""
    if source == sink:
        raise ConfigError("max_flow needs two different nodes")
    residual: Graph = {u: dict(edges) for u, edges in graph.items()}
    for u, edges in graph.items():
        for v in edges:
            residual.setdefault(v, {}).setdefault(u, 0.0)
    total = 0.0
    while True:
        parent = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, capacity in residual[u].items():
                if capacity > tolerance and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return total
        bottleneck, v = float("inf"), sink
        while v != source:
            bottleneck = min(bottleneck, residual[parent[v]][v])
            v = parent[v]
        v = sink
        while v != source:
            u = parent[v]
            residual[u][v] -= bottleneck
            residual[v][u] += bottleneck
            v = u
        total += bottleneck
