"""Sampling Gated PixelCNN and PixelSNAIL on caches: one pixel's worth of work per step, not a whole image's.

A pixel's prediction reads the vertical stack of the rows above it (final once the row above is sampled), the
horizontal stream of the pixels to its left in its own row and, in PixelSNAIL, attention over every earlier pixel.
So the sampler keeps, per gated layer, the vertical stack of the rows done (computed once per row, from the ``half``
rows above it) and the horizontal stream of the current row; per attention block, the keys and values of every
pixel sampled (projected once, when the pixel's value is known: a key reads it). Each step runs every layer at one
position with the layer's own modules, on windows exactly the size of their kernels, so the logits are the full
forward's (to rounding; tested) at about 1/(H·W) of its work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from qkv.models.pixels.convolutional import GatedLayer, GatedPixelCNN

__all__ = ["sample_gated"]


def _vertical_row(layers: list[GatedLayer], v_in: list[Tensor], v_pre: list[Tensor], row: int, labels: Tensor | None):  # noqa: ANN202
    """Fill ``row`` of every layer's vertical pre-activations ``v_pre`` and of the next layer's input ``v_in``
    (each ``(batch, channels, H, W)``), from the ``half`` rows above it (zeros above the image)."""
    for index, layer in enumerate(layers):
        half = layer.half_kernel
        top = max(0, row - half)
        rows = F.pad(v_in[index][:, :, top : row + 1], (0, 0, half - (row - top), 0))
        pre, out = layer.vertical_stack(rows, labels)
        v_pre[index][:, :, row] = pre[:, :, 0]
        if index + 1 < len(layers):
            v_in[index + 1][:, :, row] = out[:, :, 0]


@torch.no_grad()
def sample_gated(
    model: GatedPixelCNN,
    labels: Tensor | None,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    logits_out: Tensor | None = None,
) -> Tensor:
    """``n`` images ``(n, H, W)`` of levels from a Gated PixelCNN (or PixelSNAIL, through its ``step_state``,
    ``after_layer_step`` and ``remember_pixel``), in raster order, on the caches above. The model is in eval mode
    and the arguments checked (:func:`qkv.decoding.images.sample_images`). ``logits_out (n, H, W, levels)``, if
    given, receives every pixel's logits as computed here (what the full forward of the images must give)."""
    c = model.config
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    layers: list[GatedLayer] = list(model.layers)  # type: ignore[arg-type]  # (a ModuleList of GatedLayer)
    images = torch.zeros(n, c.height, c.width, dtype=torch.long, device=device)

    def zeros(channels: int, width: int = c.width, height: int = c.height) -> Tensor:
        return torch.zeros(n, channels, height, width, device=device, dtype=dtype)

    x = zeros(1)  # the scaled input of the pixels sampled so far
    v_in = [x] + [zeros(c.hidden) for _ in layers[1:]]
    v_pre = [zeros(2 * c.hidden) for _ in layers]
    none_above = zeros(2 * c.hidden, 1, 1)
    # each layer's horizontal input for the current row, with its kernel's columns of zeros on the left (the first
    # layer's one more: its input is shifted right, so a pixel never reads itself)
    pads = [layer.half_kernel + (1 if layer.first else 0) for layer in layers]
    state: Any = model.step_state(n)
    for row in range(c.height):
        if row:  # the row above is complete: its vertical stacks, layer by layer
            _vertical_row(layers, v_in, v_pre, row - 1, labels)
        h_cols = [zeros(1, pads[0] + c.width, 1)] + [zeros(c.hidden, pad + c.width, 1) for pad in pads[1:]]
        for column in range(c.width):
            pixel = row * c.width + column
            h = none_above  # (unused: the first layer has no residual input)
            for index, layer in enumerate(layers):
                half = layer.half_kernel
                window = h_cols[index][..., column : column + half + 1]
                above = v_pre[index][:, :, row - 1 : row, column : column + 1] if row else none_above
                h = layer.horizontal_stack(window, above, h, labels)
                h = model.after_layer_step(index, h, pixel, state)
                if index + 1 < len(layers):
                    h_cols[index + 1][..., pads[index + 1] + column] = h[..., 0]
            logits = model.head(h)[:, :, 0, 0]  # (n, levels)
            if logits_out is not None:
                logits_out[:, row, column] = logits
            logits = logits.float() / temperature
            drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            images[:, row, column] = drawn
            value = model.embed(drawn[:, None, None])[:, 0, 0].to(dtype)  # (n, 1): the scaled level
            x[:, :, row, column] = value
            h_cols[0][:, :, 0, pads[0] + column] = value
            model.remember_pixel(pixel, value, state)
    return images
