"""The attention pattern drawn as a grid (PNG or SVG by suffix): one head, a layer's heads, the head average, the
layer × head overview, or a seq2seq alignment (target down, source across). Queries down, keys across; token labels
on both axes; Korean and other CJK text renders with a CJK-capable font when one is installed (Noto CJK from the
setup script)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qkv.errors import ConfigError, ShapeError, describe_shape

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["IMAGE_SUFFIXES", "GridWords", "check_image_path", "downsample", "plot_alignment", "plot_attention"]

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")  # what matplotlib writes without extra packages
MAX_LABELS = 48  # beyond this many tokens the axis labels are unreadable and are left out
MAX_CELLS = 128  # longer inputs are averaged down to at most this many rows/columns per panel
CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans CJK JP", "Noto Sans CJK SC", "NanumGothic", "Noto Sans KR")


@lru_cache(maxsize=1)
def _font_family() -> list[str]:
    """A CJK-capable font first when one is installed, so Hangul labels are not drawn as boxes."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):
        # installed after matplotlib built its font cache (e.g. by scripts/setup.sh): register the files directly
        for file in sorted(Path("/usr/share/fonts").glob("**/NotoSansCJK-Regular.tt[cf]")):
            font_manager.fontManager.addfont(str(file))
        installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in installed] + ["DejaVu Sans"]


def _label(token: str) -> str:
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(token, token.replace("\n", "⏎"))


def downsample(weights: Tensor, cells: int = MAX_CELLS) -> tuple[Tensor, int]:
    """Average ``(..., q, k)`` into at most ``cells`` × ``cells`` blocks; returns the grid and the block size."""
    size = max(1, -(-max(weights.shape[-2:]) // cells))
    if size == 1:
        return weights, 1
    pooled = torch.nn.functional.avg_pool2d(weights.reshape(-1, 1, *weights.shape[-2:]).float(), size, ceil_mode=True)
    return pooled.reshape(*weights.shape[:-2], *pooled.shape[-2:]), size


def _panel(ax, w: Tensor, keys: Sequence[str], queries: Sequence[str], title: str, labels: bool):  # noqa: ANN001, ANN202
    grid, block = downsample(w)
    image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0.0, vmax=float(grid.max()) or 1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    if labels and block == 1 and max(len(keys), len(queries)) <= MAX_LABELS:
        ax.set_xticks(range(w.shape[1]), [_label(t) for t in keys[-w.shape[1] :]], fontsize=6, rotation=90)
        ax.set_yticks(range(w.shape[0]), [_label(t) for t in queries[-w.shape[0] :]], fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image, block


@dataclass(frozen=True)
class GridWords:
    """The words a drawing writes around the weights (panel titles, what rows and columns are, the colour bar):
    English by default; a page in another language passes its own (``qkv tour --lang ko``)."""

    panel: str = "layer {layer} · head {head}"
    mean: str = "layer {layer} · mean of {heads} heads"
    axes: str = "rows: queries, columns: keys"
    alignment_axes: str = "rows: target, columns: source"
    colorbar: str = "attention weight"


ENGLISH = GridWords()


def plot_attention(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    path: str | Path,
    *,
    layer: int | None = None,
    head: int | None = None,
    average: bool = False,
    title: str = "attention",
    columns: int = 4,
    words: GridWords = ENGLISH,
) -> Path:
    """Draw one sequence's attention and write it to ``path`` (``.png`` or ``.svg``).

    Args:
        attentions: per layer, weights ``(heads, q_len, k_len)``.
        tokens: the key tokens (the last ``q_len`` of them label the queries).
        layer: with ``head``, one head; alone, all heads of that layer (``average`` -> their mean); neither
            ``layer`` nor ``head``: the layer × head overview (``average`` -> one panel per layer).
        head: the head drawn, with ``layer``.
        columns: panels per row when one layer's heads are drawn (fewer, larger panels read better on a page).
        words: the words written around the weights (:class:`GridWords`; English by default).
    """
    layers, heads = len(attentions), attentions[0].shape[0]
    if layer is not None and not 0 <= layer < layers:
        raise ConfigError(f"layer {layer} does not exist: the model has {layers} layers (0..{layers - 1})")
    if head is not None and not 0 <= head < heads:
        raise ConfigError(f"head {head} does not exist: layers have {heads} heads (0..{heads - 1})")
    if head is not None and layer is None:
        raise ConfigError("--head needs --layer: say which layer's head to draw")
    panels: list[tuple[int, int, Tensor, str]] = []  # (row, col, weights, title)
    chosen = [layer] if layer is not None else list(range(layers))
    for row, li in enumerate(chosen):
        w = attentions[li].detach().float().cpu()
        if head is not None:
            panels.append((0, 0, w[head], words.panel.format(layer=li, head=head)))
        elif average:
            panels.append((row, 0, w.mean(0), words.mean.format(layer=li, heads=heads)))
        elif layer is not None:  # one layer's heads, `columns` to a row
            panels += [(h // columns, h % columns, w[h], words.panel.format(layer=li, head=h)) for h in range(heads)]
        else:
            panels += [(row, h, w[h], words.panel.format(layer=li, head=h)) for h in range(heads)]
    rows = 1 + max(p[0] for p in panels)
    cols = 1 + max(p[1] for p in panels)
    single = len(panels) == 1
    size = 6.5 if single else (3.2 if len(tokens) <= MAX_LABELS else 2.2)
    path = check_image_path(path)
    with _style():
        fig = _figure(figsize=(size * cols + 1.2, size * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        image, block = None, 1
        for ax in axes.flat:  # panels that stay empty (a last row of heads) show nothing
            ax.set_axis_off()
        for row, col, w, name in panels:
            axes[row][col].set_axis_on()
            image, block = _panel(axes[row][col], w, tokens, tokens, name, labels=single or len(tokens) <= 24)
        note = f" (averaged over {block}×{block} blocks: {len(tokens)} tokens)" if block > 1 else ""
        fig.suptitle(f"{title}{note} — {words.axes}", fontsize=10)
        return _finish(fig, axes, image, path, words.colorbar)


def check_image_path(path: str | Path) -> Path:
    """``path`` as a Path when its suffix names a format the grid can be written in, else a ConfigError."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"cannot write an image to {path}: the name must end in {', '.join(IMAGE_SUFFIXES)} "
            f"(got {path.suffix or 'no suffix'})"
        )
    return path


def _style():  # noqa: ANN202 - a matplotlib rc context
    """Our font choice for the duration of one drawing; the user's matplotlib settings are left as they were."""
    import matplotlib

    return matplotlib.rc_context({"font.family": _font_family()})


def _figure(**kwargs: object) -> Figure:
    """A bare ``Figure``: it renders to files without pyplot, so no backend is chosen for the user (a notebook's
    inline backend and MPLBACKEND stay as they are) and no figure is left open in pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)  # type: ignore[arg-type]  # (figsize and dpi, as matplotlib takes them)


def _finish(fig: Figure, axes, image, path: Path, label: str = "attention weight") -> Path:  # noqa: ANN001
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=label)
    path.parent.mkdir(parents=True, exist_ok=True)  # documented: missing parent directories are created
    fig.savefig(path, dpi=110)
    return path


def plot_alignment(
    weights: Tensor,
    source: Sequence[str],
    target: Sequence[str],
    path: str | Path,
    *,
    title: str = "alignment",
    words: GridWords = ENGLISH,
) -> Path:
    """Draw a seq2seq alignment, ``weights (target_len, source_len)``: row t = where target token t looked.

    ``source`` and ``target`` label the columns and rows; written to ``path`` (``.png`` or ``.svg``).
    """
    weights = weights.detach().float().cpu()
    if weights.dim() != 2 or weights.shape != (len(target), len(source)):
        raise ShapeError(
            f"alignment weights must be (target_len, source_len) = ({len(target)}, {len(source)}), "
            f"got {describe_shape(weights.shape)}"
        )
    path = check_image_path(path)
    with _style():
        width, height = (
            max(4.0, 0.3 * min(len(source), MAX_CELLS) + 2.5),
            max(3.0, 0.3 * min(len(target), MAX_CELLS) + 1.5),
        )
        fig = _figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, 1, squeeze=False)
        image, block = _panel(axes[0][0], weights, source, target, "", labels=True)
        axes[0][0].tick_params(labelsize=9)
        if max(len(_label(t)) for t in source) <= 4:  # short labels read upright (Hangul turned sideways does not)
            for tick in axes[0][0].get_xticklabels():
                tick.set_rotation(0)
        note = f" (averaged over {block}×{block} blocks)" if block > 1 else ""
        fig.suptitle(f"{title}{note} — {words.alignment_axes}", fontsize=10)
        return _finish(fig, axes, image, path, words.colorbar)


def plot_head_scores(scores: Tensor, path: str | Path, *, title: str = "head scores") -> Path:
    """Draw one score per head, ``scores (layers, heads)``, as a layer x head grid with the values written in."""
    scores = scores.detach().double().cpu()
    if scores.dim() != 2:
        raise ShapeError(f"head scores must be (layers, heads), got {describe_shape(scores.shape)}")
    path = check_image_path(path)
    layers, heads = scores.shape
    with _style():
        fig = _figure(figsize=(max(4.0, 0.6 * heads + 2.5), max(3.0, 0.45 * layers + 1.5)), layout="constrained")
        axes = fig.subplots(1, 1, squeeze=False)
        ax = axes[0][0]
        image = ax.imshow(scores.numpy(), cmap="viridis", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
        if layers * heads <= 400:  # the numbers, where they fit
            middle = float(scores.min() + scores.max()) / 2
            for (layer, head), value in zip(((i, j) for i in range(layers) for j in range(heads)), scores.flatten()):
                color = "black" if float(value) > middle else "white"
                ax.text(head, layer, f"{float(value):.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.suptitle(title, fontsize=10)
        return _finish(fig, axes, image, path, label="score")
