"""The attention pattern drawn as a grid: one panel per (layer, head), queries down, keys across."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (and none on a server)
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["plot_attention_overview"]

MAX_LABELS = 48  # beyond this many tokens the axis labels are unreadable and are left out


def _label(token: str) -> str:
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(token, token)


def plot_attention_overview(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    path: str | Path,
    title: str = "attention",
) -> Path:
    """Write a layer × head grid of attention maps to ``path`` (PNG or SVG by suffix).

    Args:
        attentions: per layer, weights ``(heads, q_len, k_len)`` of one sequence.
        tokens: the ``k_len`` token strings (labels of both axes when they fit).
    """
    layers = len(attentions)
    heads = attentions[0].shape[0]
    size = 2.2 if len(tokens) > MAX_LABELS else 3.2
    fig, axes = plt.subplots(layers, heads, figsize=(size * heads, size * layers), squeeze=False)
    labels = [_label(t) for t in tokens]
    image = None
    for layer, weights in enumerate(attentions):
        for head in range(heads):
            ax = axes[layer][head]
            w = weights[head].detach().float().cpu().numpy()
            image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer} · head {head}", fontsize=8)
            if len(tokens) <= MAX_LABELS:
                ax.set_xticks(range(len(labels)), labels, fontsize=5, rotation=90)
                ax.set_yticks(range(w.shape[0]), labels[-w.shape[0] :], fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    note = "" if len(tokens) <= MAX_LABELS else f" ({len(tokens)} tokens: labels omitted)"
    fig.suptitle(f"{title}{note} — rows: queries, columns: keys", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
