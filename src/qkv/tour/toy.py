"""Steps of the tour that need no trained model: hand-built examples computed with qkv's own functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qkv.attention import MultiHeadAttention, attend
from qkv.attention.scores import make_score
from qkv.tour.base import Step
from qkv.tour.figures import each_language, heatmap, lines
from qkv.tour.text import figure_words
from qkv.visualization import Explorer, capture_attention
from qkv.visualization.kinds import attention_kinds

__all__ = ["i_go_home", "local_alignment", "made_and_pixelcnn_masks", "scaling", "score_functions", "single_head"]

WORDS_HOME = ["I", "go", "home"]


def _weights(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """qkv's attention weights of one head: ``q (n, d)``, ``k (m, d)`` -> ``(n, m)``."""
    _, w = attend(q[None, None], k[None, None], k[None, None], scale=scale, backend="reference", return_weights=True)
    assert w is not None  # (asked for)
    return w[0, 0]


def i_go_home(steps: int = 300) -> Step:
    """Self-attention without projections (Q = K = V = X), then learned W_Q, W_K, W_V that give "I" the spread
    (0.2, 0.1, 0.7)."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3, 4, generator=g), dim=-1) * 1.5  # equal norms
    plain = _weights(x, x, scale=1.0)  # Q = K = V = X, plain dot products
    target = torch.tensor([0.2, 0.1, 0.7])
    torch.manual_seed(0)
    w_q, w_k = (torch.nn.Parameter(torch.eye(4) + 0.1 * torch.randn(4, 4)) for _ in range(2))
    optimizer = torch.optim.Adam([w_q, w_k], lr=0.05)
    for _ in range(steps):  # a toy objective: the row of "I" should be the target spread
        row = torch.softmax((x[0] @ w_q) @ (x @ w_k).T / 2.0, dim=-1)
        loss = F.kl_div(row.log(), target, reduction="sum")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    w_v = torch.eye(4) + 0.1 * torch.randn(4, 4, generator=g)
    with torch.no_grad():
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        learned = _weights(q, k)
        out, _ = attend(q[None, None], k[None, None], v[None, None], backend="reference")
        new_i = out[0, 0, 0]
        explorer = _neuron_explorer(x, w_q, w_k, w_v)
    return Step(
        "i_go_home",
        numbers={
            "plain": plain,
            "learned_row": learned[0],
            "target": target,
            "new_i": new_i,
            "weighted_sum": (learned[0][:, None] * v).sum(dim=0),
            "plain_diag": plain.diagonal().tolist(),
            "neuron": explorer.kinds[0],
        },
        explorers=[("neuron", explorer)],
        figures=[
            (
                "plain",
                each_language(
                    lambda lang: heatmap(
                        plain, WORDS_HOME, WORDS_HOME, figure_words(lang, "plain"), ylabel=figure_words(lang, "query")
                    )
                ),
            ),
            (
                "learned",
                each_language(
                    lambda lang: heatmap(
                        learned,
                        WORDS_HOME,
                        WORDS_HOME,
                        figure_words(lang, "learned"),
                        ylabel=figure_words(lang, "query"),
                    )
                ),
            ),
        ],
    )


def _neuron_explorer(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> Explorer:
    """The learned head as a one-head attention module (X @ W is nn.Linear with weight W^T; the output projection
    is the identity), run under a capture so that the neuron view shows its own hook points: q, k, q⊙k, q·k/√d,
    the softmax and the weighted sum of the values, for the query "I" and the key "home"."""
    module = MultiHeadAttention(4, 1, proj_bias=False)
    with torch.no_grad():
        for linear, weight in ((module.q_proj, w_q), (module.k_proj, w_k), (module.v_proj, w_v)):
            linear.weight.copy_(weight.T)
        module.out_proj.weight.copy_(torch.eye(4))
    with torch.no_grad(), capture_attention(module, scores=True, vectors=True) as capture:
        module(x[None])
    kinds = attention_kinds(capture, WORDS_HOME)
    return Explorer.of(kinds, title="“I go home”", opening={"view": "neuron", "query": 0, "key": 2})


FLUFFY = ["a", "fluffy", "blue", "creature", "roamed", "the", "verdant", "forest"]
ADJECTIVES = {1, 2, 6}
NOUNS = {3: [1, 2], 7: [6]}  # noun -> its adjectives


def single_head() -> Step:
    """3Blue1Brown's single head: embeddings and W_Q, W_K built by hand so that nouns (queries) find the adjectives
    just before them (keys); the grid of dot products, then softmax down each query's column."""
    n = len(FLUFFY)
    # embedding: [is_noun, is_adjective, one-hot position (n)]
    e = torch.zeros(n, 2 + n)
    for i in range(n):
        e[i, 0], e[i, 1], e[i, 2 + i] = float(i in NOUNS), float(i in ADJECTIVES), 1.0
    # W_Q: a noun at position p asks "an adjective at p-1 or p-2?" in an n-dimensional query space (one axis per
    # position); W_K: an adjective answers on its own position's axis
    strength = 4.0
    w_q = torch.zeros(2 + n, n)
    w_k = torch.zeros(2 + n, n)
    for p in range(n):
        for back in (1, 2):
            if p - back >= 0:
                w_q[2 + p, p - back] = strength
        w_k[2 + p, p] = strength
    q = (e @ w_q) * e[:, :1]  # only nouns ask (the noun flag gates the query)
    k = (e @ w_k) * e[:, 1:2]  # only adjectives answer
    dots = k @ q.T  # (keys, queries): 3Blue1Brown's grid, queries as columns
    weights = _weights(q, k, scale=1.0).T  # softmax over keys for each query, drawn as columns
    return Step(
        "single_head",
        numbers={
            "dots": dots,
            "weights": weights,
            "creature_on_adjectives": float(weights[[1, 2], 3].sum()),
            "forest_on_verdant": float(weights[6, 7]),
            "the_creature_dot": float(dots[5, 3]),
            "fluffy_creature_dot": float(dots[1, 3]),
        },
        figures=[
            (
                "dots",
                each_language(lambda lang: heatmap(dots, FLUFFY, FLUFFY, figure_words(lang, "dots"), cmap="RdBu_r")),
            ),
            ("pattern", each_language(lambda lang: heatmap(weights, FLUFFY, FLUFFY, figure_words(lang, "pattern")))),
        ],
    )


def scaling(samples: int = 2000, keys: int = 16) -> Step:
    """Why divide by √d_k: the spread of q·k grows as √d_k, and softmax saturates without the scale."""
    dims = [4, 16, 64, 256, 1024]
    g = torch.Generator().manual_seed(0)
    spread, spread_scaled, peak, peak_scaled = [], [], [], []
    for d in dims:
        q = torch.randn(samples, 1, d, generator=g)
        k = torch.randn(samples, keys, d, generator=g)
        scores = (q @ k.transpose(1, 2))[:, 0]  # (samples, keys)
        spread.append(float(scores.std()))
        spread_scaled.append(float((scores / math.sqrt(d)).std()))
        peak.append(float(torch.softmax(scores, -1).max(-1).values.mean()))
        peak_scaled.append(float(torch.softmax(scores / math.sqrt(d), -1).max(-1).values.mean()))
    figure = each_language(lambda lang: lines(
        dims,
        {figure_words(lang, "unscaled"): peak, figure_words(lang, "scaled"): peak_scaled},
        figure_words(lang, "saturation", keys=keys),
        "d_k",
        figure_words(lang, "largest"),
        log_x=True,
    ))  # fmt: skip
    return Step(
        "scaling",
        numbers={
            "dims": dims,
            "spread": spread,
            "spread_scaled": spread_scaled,
            "peak": peak,
            "peak_scaled": peak_scaled,
            "keys": keys,
        },  # fmt: skip
        figures=[("saturation", figure)],
        tables=[
            (
                [
                    "d_k",
                    ("std of q·k", "q·k의 표준편차"),
                    ("std of q·k/√d_k", "q·k/√d_k의 표준편차"),
                    ("largest weight", "가장 큰 가중치"),
                    ("largest weight, scaled", "가장 큰 가중치(나눈 뒤)"),
                ],
                [
                    [str(d), f"{a:.2f}", f"{b:.2f}", f"{c:.3f}", f"{e:.3f}"]
                    for d, a, b, c, e in zip(dims, spread, spread_scaled, peak, peak_scaled)
                ],  # fmt: skip
            )
        ],
    )


def score_functions() -> Step:
    """Luong's score functions on one decoder state and five encoder states, through qkv's score modules."""
    torch.manual_seed(0)
    h_t = torch.randn(1, 8)
    h_s = torch.randn(5, 8)
    rows = {}
    for name in ("dot", "general", "concat", "location"):
        score = make_score(name, q_dim=8, k_dim=8, max_len=5)
        with torch.no_grad():
            _, w = attend(h_t[None, None], h_s[None, None], h_s[None, None], score=score, backend="reference",
                          return_weights=True)  # fmt: skip
        assert w is not None  # (asked for)
        rows[name] = w[0, 0, 0]
    table = torch.stack(list(rows.values()))
    return Step(
        "score_functions",
        numbers={"weights": rows},
        figures=[
            (
                "scores",
                each_language(
                    lambda lang: heatmap(
                        table, list(rows), [f"h̄{s + 1}" for s in range(5)], figure_words(lang, "scores")
                    )
                ),
            )
        ],  # fmt: skip
    )


def local_alignment(window: int = 2, step: int = 5) -> Step:
    """Global, local-m and local-p attention of one decoder step over 12 source positions (window D), from qkv's
    RNN encoder-decoder with the same initial weights: local-m centres the window on the step, local-p on a
    predicted position p_t and multiplies by a Gaussian (sigma = D / 2), so its weights sum to less than one."""
    from qkv.models import RNNSeq2Seq, RNNSeq2SeqConfig

    src = torch.randint(4, 20, (1, 12), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(4, 20, (1, 8), generator=torch.Generator().manual_seed(2))
    rows = {}
    for alignment in ("global", "local-m", "local-p"):
        torch.manual_seed(0)
        config = RNNSeq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, alignment=alignment, window=window, dropout=0)
        model = RNNSeq2Seq(config).eval()
        with torch.no_grad():
            rows[alignment] = model(src, tgt, return_attention=True).cross_attentions[0][0, 0, step]
    table = torch.stack(list(rows.values()))
    return Step(
        "local",
        numbers={"rows": rows, "window": window, "step": step, "local_p_sum": float(rows["local-p"].sum())},
        figures=[
            (
                "local",
                each_language(
                    lambda lang: heatmap(
                        table,
                        list(rows),
                        [str(s) for s in range(12)],
                        figure_words(lang, "local", step=step, window=window),
                    )
                ),
            )
        ],  # fmt: skip
    )


def made_and_pixelcnn_masks() -> Step:
    """MADE's connectivity for three inputs and PixelCNN's type A and B kernel masks, from qkv's models."""
    from qkv.analysis import made_connectivity
    from qkv.models.pixels import MADE, MaskedConv2d
    from qkv.models.pixels.base import MADEConfig

    torch.manual_seed(0)
    made = MADE(MADEConfig(height=1, width=3, levels=2, hidden=8, layers=1, num_masks=1))
    connectivity = made_connectivity(made).int()
    mask_a = MaskedConv2d(1, 1, 5, "A").mask
    mask_b = MaskedConv2d(1, 1, 5, "B").mask
    names = ["x1", "x2", "x3"]
    return Step(
        "masks",
        numbers={
            "made": connectivity.tolist(),
            "mask_a": mask_a.int().tolist(),
            "mask_b": mask_b.int().tolist(),
            "kernel": tuple(mask_a.shape),
            "centre": mask_a.shape[0] // 2,
            "row_a": " ".join(str(int(v)) for v in mask_a[mask_a.shape[0] // 2]),
            "row_b": " ".join(str(int(v)) for v in mask_b[mask_b.shape[0] // 2]),
        },
        tables=[
            (
                ["", *names],
                [[f"p(x{d + 1}|·)", *("✓" if c else "·" for c in row)] for d, row in enumerate(connectivity.tolist())],
            )
        ],  # fmt: skip
        figures=[
            (
                "made",
                each_language(
                    lambda lang: heatmap(
                        connectivity.float(), [f"p(x{i + 1}|·)" for i in range(3)], names, figure_words(lang, "made")
                    )
                ),
            ),
            (
                "pixelcnn",
                each_language(
                    lambda lang: heatmap(
                        torch.cat([mask_a, torch.zeros(5, 1), mask_b], dim=1),
                        [str(r) for r in range(5)],
                        [str(c) for c in range(5)] + [""] + [str(c) for c in range(5)],
                        figure_words(lang, "pixelcnn"),
                    )
                ),
            ),  # fmt: skip
        ],
    )
