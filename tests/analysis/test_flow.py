"""Attention rollout by hand, attention flow against networkx's maximum flow, and both on a model's attentions."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import qkv
from qkv.analysis import attention_flow, attention_rollout, max_flow
from qkv.errors import ShapeError


def _two_layers() -> list[torch.Tensor]:
    """3 tokens, 2 layers, 2 heads whose averages are A1 and A2 below."""
    a1_h0 = [[1, 0, 0], [1, 0, 0], [0.4, 0.6, 0]]
    a1_h1 = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    a2 = [[1, 0, 0], [0.4, 0.6, 0], [0.1, 0.1, 0.8]]
    return [torch.tensor([[a1_h0, a1_h1]], dtype=torch.float64), torch.tensor([[a2, a2]], dtype=torch.float64)]


def test_rollout_equals_the_hand_computation():
    # Ã1 = 0.5·mean(A1) + 0.5·I = [[1,0,0],[.25,.75,0],[.1,.15,.75]], Ã2 = [[1,0,0],[.2,.8,0],[.05,.05,.9]]
    # R = Ã2 Ã1, row 2: .05·[1,0,0] + .05·[.25,.75,0] + .9·[.1,.15,.75]
    want = torch.tensor([[[1.0, 0, 0], [0.4, 0.6, 0], [0.1525, 0.1725, 0.675]]], dtype=torch.float64)
    torch.testing.assert_close(attention_rollout(_two_layers()), want, rtol=1e-12, atol=1e-12)
    # through layer 0 only: Ã1 itself
    first = torch.tensor([[[1.0, 0, 0], [0.25, 0.75, 0], [0.1, 0.15, 0.75]]], dtype=torch.float64)
    every = attention_rollout(_two_layers(), every_layer=True)
    assert every.shape == (2, 1, 3, 3)
    torch.testing.assert_close(every[0], first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(every[1], want, rtol=1e-12, atol=1e-12)


def _networkx_flow(attentions: list[torch.Tensor]) -> torch.Tensor:
    """The same quantity built independently: Ã per layer, a networkx DiGraph, nx.maximum_flow_value per pair."""
    seq = attentions[0].shape[-1]
    graph = nx.DiGraph()
    for layer, a in enumerate(attentions):
        mixed = 0.5 * a[0].double().mean(0) + 0.5 * torch.eye(seq, dtype=torch.float64)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        for i in range(seq):
            for j in range(seq):
                if mixed[i, j] > 0:
                    graph.add_edge(("L", layer + 1, i), ("L", layer, j), capacity=float(mixed[i, j]))
    out = torch.zeros(1, seq, seq, dtype=torch.float64)
    top = len(attentions)
    for i in range(seq):
        for j in range(seq):
            source, sink = ("L", top, i), ("L", 0, j)
            if graph.has_node(source) and graph.has_node(sink):
                out[0, i, j] = nx.maximum_flow_value(graph, source, sink)
    return out


def test_flow_equals_networkx_on_the_hand_example_and_on_random_causal_attentions():
    torch.testing.assert_close(attention_flow(_two_layers()), _networkx_flow(_two_layers()), rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        seq = 5
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        layers = [
            torch.softmax(torch.randn(1, 2, seq, seq, generator=g).masked_fill(~causal, float("-inf")), -1)
            for _ in range(3)
        ]
        torch.testing.assert_close(attention_flow(layers), _networkx_flow(layers), rtol=1e-9, atol=1e-12)


def test_max_flow_of_a_textbook_graph():
    # CLRS figure 26.1: the maximum flow from s (0) to t (5) is 23
    graph = {0: {1: 16, 2: 13}, 1: {3: 12}, 2: {1: 4, 4: 14}, 3: {2: 9, 5: 20}, 4: {3: 7, 5: 4}, 5: {}}
    assert max_flow(graph, 0, 5) == pytest.approx(23)


def test_rollout_and_flow_of_a_models_captured_attentions():
    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=8, num_layers=3, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (1, 6))
    with qkv.capture_attention(model.eval()) as cap:
        model(ids)
    layers = cap.all_layers()
    rollout = attention_rollout(layers)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(1, 6, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert not rollout.triu(1).any()  # causal: nothing flows from a later token
    flow = attention_flow(layers)
    assert not flow.triu(1).any() and bool((flow <= 1 + 1e-9).all())
    torch.testing.assert_close(flow[0, 0, 0], torch.tensor(1.0, dtype=torch.float64))  # the first token has one path


def test_bad_attentions_are_refused():
    with pytest.raises(ShapeError, match="must be \\(batch, heads, seq, seq\\)"):
        attention_rollout([torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4)])
