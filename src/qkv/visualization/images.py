"""Generated images beside their nearest training images (to show a sample is not a copy)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from qkv.errors import ShapeError, describe_shape
from qkv.visualization.grid import _figure, _style, check_image_path

__all__ = ["nearest_images", "plot_pixel_fields", "plot_samples"]


def nearest_images(samples: Tensor, training: Tensor) -> tuple[Tensor, Tensor]:
    """For each sample ``(n, H, W)``, the index of the closest training image ``(N, H, W)`` in L2 over the levels
    and that distance: ``(indices (n,), distances (n,))``."""
    if samples.shape[1:] != training.shape[1:]:
        raise ShapeError(
            f"samples {describe_shape(samples.shape)} and training images {describe_shape(training.shape)} differ "
            "in size"
        )
    distances = torch.cdist(samples.flatten(1).double(), training.flatten(1).double())  # (n, N)
    best, index = distances.min(dim=1)
    return index, best


def plot_samples(
    samples: Tensor,
    path: str | Path,
    *,
    levels: int,
    labels: Tensor | None = None,
    nearest: Tensor | None = None,
    distances: Tensor | None = None,
    title: str = "samples",
) -> Path:
    """Draw ``samples (n, H, W)`` in a grid (grey, 0 = white as the digits are drawn), each with its class when
    given and, with ``nearest (n, H, W)`` and ``distances (n,)``, its nearest training image beside it."""
    path = check_image_path(path)
    n = samples.shape[0]
    per_item = 2 if nearest is not None else 1
    columns = max(1, min(4 if nearest is not None else 8, n))
    rows = -(-n // columns)
    with _style():
        fig = _figure(figsize=(1.1 * columns * per_item + 0.4, 1.35 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, columns * per_item, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i in range(n):
            row, column = divmod(i, columns)
            ax = axes[row][column * per_item]
            ax.imshow(samples[i].cpu().numpy(), cmap="gray_r", vmin=0, vmax=levels - 1)
            ax.set_title(f"class {int(labels[i])}" if labels is not None else f"#{i}", fontsize=7)
            if nearest is not None and distances is not None:
                twin = axes[row][column * per_item + 1]
                twin.imshow(nearest[i].cpu().numpy(), cmap="gray_r", vmin=0, vmax=levels - 1, alpha=0.55)
                twin.set_title(f"nearest: {float(distances[i]):.1f}", fontsize=7)
        fig.suptitle(title, fontsize=9)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return path


def plot_pixel_fields(
    maps: dict[str, Tensor],
    pixel: tuple[int, int],
    path: str | Path,
    *,
    image: Tensor | None = None,
    levels: int | None = None,
    title: str = "what one pixel depends on",
) -> Path:
    """Draw, for one ``pixel`` (row, column), each named ``(H, W)`` map of what it depends on (gradients, a MADE
    mask, attention weights) side by side, the pixel outlined in red; with ``image`` (and its ``levels``) the input
    first. Each map is scaled to its own maximum; exact zeros stay white."""
    from matplotlib.patches import Rectangle

    path = check_image_path(path)
    panels = ([("input image", image.cpu().double())] if image is not None else []) + [
        (name, m.detach().cpu().double()) for name, m in maps.items()
    ]
    with _style():
        fig = _figure(figsize=(2.3 * len(panels) + 0.3, 2.8), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, values) in zip(axes, panels):
            if name == "input image" and levels is not None:
                ax.imshow(values.numpy(), cmap="gray_r", vmin=0, vmax=levels - 1)
            else:
                ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-12))
            ax.add_patch(Rectangle((pixel[1] - 0.5, pixel[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{title}: pixel {pixel}", fontsize=9)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return path
