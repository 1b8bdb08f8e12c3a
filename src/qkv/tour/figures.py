"""Figures of the tour as PNG bytes (embedded in the page as data URIs: the page stays one offline file)."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from qkv.visualization.grid import GridWords, _figure, _style

__all__ = ["bars", "each_language", "from_file", "grid_words", "heatmap", "lines"]


def each_language(draw: Callable[[str], bytes]) -> dict[str, bytes]:
    """A figure drawn once per language of the tour (its words in that language), by language."""
    from qkv.tour.text import LANGUAGES

    return {lang: draw(lang) for lang in LANGUAGES}


def grid_words(lang: str) -> GridWords:
    """The words of qkv's attention drawings in ``lang``."""
    from qkv.tour.text import GRID_KO

    return GridWords(**GRID_KO) if lang == "ko" else GridWords()


def _png(draw: Callable, size: tuple[float, float]) -> bytes:
    with _style():
        fig = _figure(figsize=size, layout="constrained")
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def heatmap(
    values: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    numbers: bool = True,
    cmap: str = "Blues",
    xlabel: str = "",
    ylabel: str = "",
) -> bytes:
    """``values (rows, columns)`` as a labelled grid, each cell's number written in when ``numbers``."""
    v = values.detach().double().cpu()

    def draw(fig) -> None:  # noqa: ANN001
        ax = fig.subplots()
        image = ax.imshow(v.numpy(), cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(columns)), list(columns), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if numbers and v.numel() <= 144:
            middle = float(v.min() + v.max()) / 2
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    x = float(v[i, j])
                    text = "-∞" if x == float("-inf") else f"{x:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if x > middle else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.7)

    return _png(draw, (0.55 * len(columns) + 2.6, 0.4 * len(rows) + 1.6))


def lines(
    x: Sequence[float], series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str, *, log_x: bool = False
) -> bytes:
    """One line per named series over ``x``."""

    def draw(fig) -> None:  # noqa: ANN001
        ax = fig.subplots()
        for name, values in series.items():
            ax.plot(list(x), list(values), marker="o", label=name)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    return _png(draw, (5.0, 3.2))


def bars(labels: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str) -> bytes:
    """Grouped bars: one group per label, one bar per named series."""

    def draw(fig) -> None:  # noqa: ANN001
        ax = fig.subplots()
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            ax.bar([i + k * width for i in range(len(labels))], list(values), width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], list(labels), fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)

    return _png(draw, (0.7 * len(labels) + 3.0, 3.0))


def from_file(write: Callable[[Path], object]) -> bytes:
    """The PNG a qkv drawing function writes to a path (``plot_attention``, ``plot_alignment``, ...)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "figure.png"
        write(path)
        return path.read_bytes()
