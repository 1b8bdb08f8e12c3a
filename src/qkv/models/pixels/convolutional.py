"""PixelCNN (van den Oord et al. 2016a) and Gated PixelCNN (van den Oord et al. 2016b): masked convolutions.

PixelCNN masks each kernel so that pixel d sees only the pixels above it and to its left: type A (the first layer)
also hides d itself, type B (later layers) lets d see its own features, which hold only what came before. Stacking
3×3 masked kernels leaves a *blind spot*: pixels above and to the right that the receptive field never reaches.
Gated PixelCNN splits the network into a vertical stack (every pixel of the rows above) and a horizontal stack (the
pixels to the left in the same row), feeds the vertical into the horizontal one row down, and so has no blind spot;
its layers use ``tanh(a) · sigmoid(b)`` gates, with the class label added inside the gates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.models.pixels.base import PixelConfig, PixelModel, label_embedding

__all__ = ["GatedPixelCNN", "MaskedConv2d", "PixelCNN", "gated_layers"]


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution whose kernel is zero below the centre row and right of the centre in it; the centre
    itself too for type ``"A"``."""

    mask: Tensor  # the kernel's causal mask, a buffer

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask_type: str) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        mask = torch.ones(kernel, kernel)
        centre = kernel // 2
        mask[centre, centre + (mask_type == "B") :] = 0
        mask[centre + 1 :] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _levels_input(images: Tensor, levels: int) -> Tensor:
    """Levels (floating) scaled to [-1, 1], as the one input channel ``(batch, H, W, 1)``."""
    return (images / (levels - 1) * 2 - 1)[..., None]


def _class_bias(
    embedding: nn.Embedding | None, labels: Tensor | None, dtype: torch.dtype | None = None
) -> Tensor | float:
    """``(batch, channels, 1, 1)`` added to every position (in ``dtype``: the activations', so that a bf16 gate
    is not promoted to fp32 by an fp32 bias — a PixelSNAIL training step took 0.91 s that way, 0.83 s in bf16), or
    0 without a label."""
    if embedding is None or labels is None:
        return 0.0
    bias = embedding(labels)[:, :, None, None]
    return bias if dtype is None else bias.to(dtype)


def _head(c: PixelConfig) -> nn.Module:
    """Two 1×1 convolutions from the features to the ``levels`` logits of each pixel (dropout before them)."""
    return nn.Sequential(
        nn.ReLU(), nn.Dropout(c.dropout), nn.Conv2d(c.hidden, c.hidden, 1), nn.ReLU(), nn.Conv2d(c.hidden, c.levels, 1)
    )


class PixelCNN(PixelModel):
    """One type-A ``first_kernel`` convolution, ``layers - 1`` type-B ``kernel`` convolutions with ReLU and
    residual connections, then two 1×1 convolutions to ``levels`` logits per pixel."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.first = MaskedConv2d(1, c.hidden, c.first_kernel, "A")
        self.convs = nn.ModuleList(MaskedConv2d(c.hidden, c.hidden, c.kernel, "B") for _ in range(c.layers - 1))
        self.labels = nn.ModuleList(label_embedding(c, c.hidden) or nn.Identity() for _ in range(c.layers))
        self.head = _head(c)
        self.dropout = nn.Dropout(c.dropout)

    def embed(self, images: Tensor) -> Tensor:
        return _levels_input(self.as_float(images), self.config.levels)

    def _label(self, index: int, labels: Tensor | None) -> Tensor | float:
        embedding = self.labels[index]
        return _class_bias(embedding if isinstance(embedding, nn.Embedding) else None, labels)

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:
        x = self.first(features.permute(0, 3, 1, 2)) + self._label(0, labels)  # (batch, hidden, H, W)
        for index, conv in enumerate(self.convs, start=1):
            x = x + self.dropout(conv(F.relu(x))) + self._label(index, labels)
        return self.head(x).permute(0, 2, 3, 1)  # (batch, H, W, levels)


def _down(x: Tensor) -> Tensor:
    """Shift ``(batch, C, H, W)`` down one row (row 0 becomes zeros): row i then holds what row i - 1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _right(x: Tensor) -> Tensor:
    """Shift ``(batch, C, H, W)`` right one column."""
    return F.pad(x, (1, 0))[..., :-1]


class GatedLayer(nn.Module):
    """One gated layer: the vertical stack sees the ``kernel // 2 + 1`` rows ending at its own, the horizontal
    stack the ``kernel // 2 + 1`` columns ending at its own (``first``: the input shifted right, so not its own)
    plus the vertical stack of the row above."""

    def __init__(
        self, channels: int, in_channels: int, kernel: int, first: bool, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        half = kernel // 2
        self.half_kernel, self.first = half, first  # (not `half`: that is nn.Module.half())
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.label = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``v, h (batch, in_channels, H, W)`` -> ``v, h (batch, channels, H, W)``."""
        half = self.half_kernel
        v_pre, v_out = self.vertical_stack(F.pad(v, (0, 0, half, 0)), labels)  # rows i - half .. i
        h_in = _right(h) if self.first else h
        # columns j - half .. j of the same row, plus the vertical stack of the rows above only
        return v_out, self.horizontal_stack(F.pad(h_in, (half, 0, 0, 0)), _down(v_pre), h, labels)

    def vertical_stack(self, v_rows: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``v_rows (batch, in_channels, R + half, W)``: R rows with the ``half`` rows above them (zeros above the
        image) -> the pre-activations ``(batch, 2·channels, R, W)`` (what the horizontal stack of the next row reads)
        and the gated output ``(batch, channels, R, W)``. The columns are padded here."""
        half = self.half_kernel
        v_pre = self.vertical(F.pad(v_rows, (half, half, 0, 0)))
        return v_pre, self.gate(v_pre + _class_bias(self.label, labels, v_pre.dtype))

    def horizontal_stack(self, h_cols: Tensor, v_pre_above: Tensor, h: Tensor, labels: Tensor | None) -> Tensor:
        """``h_cols (batch, in_channels, R, W + half)``: the horizontal input (the first layer's already shifted
        right) with ``half`` columns to the left of each (zeros left of the image); ``v_pre_above (batch,
        2·channels, R, W)``: the vertical pre-activations of the row above each; ``h``: the residual input
        ``(batch, channels, R, W)`` (unused by the first layer) -> the new horizontal stream ``(batch, channels, R,
        W)``. Called on whole images by :meth:`forward` and on one pixel by cached sampling."""
        h_pre = self.horizontal(h_cols) + self.vertical_to_horizontal(v_pre_above)
        h_out = self.dropout(self.horizontal_out(self.gate(h_pre + _class_bias(self.label, labels, h_pre.dtype))))
        return h_out if self.first else h + h_out


def gated_layers(c: PixelConfig) -> nn.ModuleList:
    """``c.layers`` gated layers: the first reads the one input channel with a ``first_kernel``, the rest
    ``c.hidden`` channels with a ``kernel`` (Gated PixelCNN's and PixelSNAIL's convolutions)."""
    return nn.ModuleList(
        GatedLayer(
            c.hidden,
            1 if i == 0 else c.hidden,
            c.first_kernel if i == 0 else c.kernel,
            i == 0,
            c.num_classes,
            c.dropout,
        )
        for i in range(c.layers)
    )


class GatedPixelCNN(PixelModel):
    """``layers`` gated layers (the first reads the scaled levels), then two 1×1 convolutions to the logits."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.layers = gated_layers(c)
        self.head = _head(c)

    def embed(self, images: Tensor) -> Tensor:
        return _levels_input(self.as_float(images), self.config.levels)

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:
        x = features.permute(0, 3, 1, 2)  # (batch, 1, H, W)
        # the vertical stack may see its own row: it reaches the horizontal stack only shifted one row down
        v, h = x, x
        for index, layer in enumerate(self.layers):
            v, h = layer(v, h, labels)
            h = self.after_layer(index, h, features)
        return self.head(h).permute(0, 2, 3, 1)

    def after_layer(self, index: int, h: Tensor, features: Tensor) -> Tensor:
        """What happens to the horizontal stream ``h (batch, C, H, W)`` after gated layer ``index``: nothing here;
        PixelSNAIL attends (``features``: the scaled input, ``(batch, H, W, 1)``)."""
        return h

    # -- cached sampling (qkv.models.pixels.cached): the same, one pixel at a time --------------------------------
    def sample_cached(
        self, labels: Tensor | None, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """``n`` images ``(n, H, W)``, one pixel per step on caches of the stacks (each step runs every layer at
        one position); :func:`qkv.decoding.images.sample_images` checks the arguments."""
        from qkv.models.pixels.cached import sample_gated

        return sample_gated(self, labels, n, generator, temperature)

    def step_state(self, n: int) -> Any:
        """What :meth:`after_layer_step` keeps across the pixels of ``n`` images being sampled: nothing here."""
        return None

    def after_layer_step(self, index: int, h: Tensor, pixel: int, state: Any) -> Tensor:
        """:meth:`after_layer` for the one pixel ``pixel`` (raster index) being sampled, ``h (n, C, 1, 1)``."""
        return h

    def remember_pixel(self, pixel: int, value: Tensor, state: Any) -> None:
        """Pixel ``pixel`` was drawn, its scaled level ``value (n, 1)``: nothing to remember here."""
