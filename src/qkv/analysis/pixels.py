"""Which earlier pixels a pixel of an autoregressive image model depends on: by gradients (any model: PixelCNN's
receptive field with its blind spot, Gated PixelCNN's without), by construction (MADE's masks), and by the
attention weights the pixel Transformer computed."""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.errors import ConfigError
from qkv.models.modes import eval_mode
from qkv.models.pixels import MADE, PixelSNAIL, PixelTransformer
from qkv.models.pixels.base import PixelModel
from qkv.visualization.capture import capture_attention
from qkv.visualization.html import AttentionKind, PixelFields
from qkv.visualization.widget import Explorer

__all__ = [
    "FIELD_PAGE_LIMIT",
    "made_connectivity",
    "pixel_attention",
    "pixel_dependence",
    "pixel_explorer",
    "pixel_maps",
    "snail_attention",
]

FIELD_PAGE_LIMIT = 256  # pixels: up to this many, the explorer holds every pixel's maps (click to switch)


def _check_pixel(model: PixelModel, pixel: tuple[int, int]) -> int:
    row, column = pixel
    c = model.config
    if not (0 <= row < c.height and 0 <= column < c.width):
        raise ConfigError(f"pixel {pixel} is outside the {c.height}x{c.width} image")
    return row * c.width + column


def pixel_dependence(
    model: PixelModel, images: Tensor, labels: Tensor | None, pixel: tuple[int, int], seed: int = 0
) -> Tensor:
    """``(H, W)``: how strongly the logits of ``pixel`` (row, column) respond to each input pixel, the norm of the
    gradient of a random projection of those logits w.r.t. each pixel's input features, summed over the batch
    ``images (batch, H, W)``. Exactly zero where the model cannot see."""
    _check_pixel(model, pixel)
    model.check_input(images, labels)
    features = model.embed(images).detach().requires_grad_()
    with torch.enable_grad():
        logits = model.predict(features, labels)[:, pixel[0], pixel[1]]
        direction = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed)).to(logits)
        (grad,) = torch.autograd.grad((logits * direction).sum(), features)
    return grad.norm(dim=-1).sum(dim=0).detach()


def made_connectivity(model: MADE, mask: int | None = None) -> Tensor:
    """``(pixels, pixels)`` bool, output d × input i: whether any path of nonzero mask entries (or a direct
    connection) leads from input i to output d, for connectivity ``mask`` (default: the active one)."""
    if not isinstance(model, MADE):
        raise ConfigError(f"made_connectivity needs a MADE model, got {type(model).__name__}")
    m = model.active if mask is None else mask
    layers = model.config.layers
    reach = model.mask(m, 0)
    for k in range(1, layers):
        reach = model.mask(m, k) @ reach
    paths = (model.mask(m, layers) @ reach + model.mask(m, layers + 1)) > 0  # (pixels · logits per pixel, pixels)
    return paths.view(model.config.pixels, model.logits_per_pixel, -1).any(dim=1)


@torch.no_grad()
def pixel_attention(
    model: PixelTransformer, images: Tensor, labels: Tensor | None, pixel: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The weights with which the prediction of ``pixel`` attended to each earlier pixel, per layer, averaged over
    heads, for the first image: ``(layers, H, W)`` (key s of the sequence holds pixel s - 1) and the weight on the
    start position ``(layers,)``."""
    if not isinstance(model, PixelTransformer):
        raise ConfigError(f"pixel_attention needs a pixel Transformer, got {type(model).__name__}")
    index = _check_pixel(model, pixel)
    c = model.config
    first_label = None if labels is None else labels[:1]
    weights = model.attention(images[:1], first_label)
    rows = torch.stack([w[0, :, index].mean(dim=0) for w in weights])  # (layers, keys)
    on_pixels = torch.zeros(len(rows), c.pixels, dtype=rows.dtype, device=rows.device)
    on_pixels[:, : c.pixels - 1] = rows[:, 1:]  # key s -> pixel s - 1
    return on_pixels.view(-1, c.height, c.width), rows[:, 0]


def pixel_maps(model: PixelModel, image: Tensor, label: Tensor | None, pixel: tuple[int, int]) -> dict[str, Tensor]:
    """``{name: (H, W)}`` maps of what ``pixel`` depends on for this model: gradients always; MADE's mask; the
    Transformer's attention per layer (heads averaged)."""
    c = model.config
    maps = {"gradient": pixel_dependence(model, image, label, pixel)}
    if isinstance(model, MADE):
        maps["MADE mask"] = made_connectivity(model)[pixel[0] * c.width + pixel[1]].view(c.height, c.width).double()
    if isinstance(model, PixelTransformer):
        attention, _ = pixel_attention(model, image, label, pixel)
        maps.update({f"attention, layer {i}": a for i, a in enumerate(attention)})
    if isinstance(model, PixelSNAIL):
        attention = snail_attention(model, image, label, pixel)
        maps.update({f"attention, block {i}": a for i, a in enumerate(attention)})
    return maps


@torch.no_grad()
def snail_attention(model: PixelSNAIL, images: Tensor, labels: Tensor | None, pixel: tuple[int, int]) -> Tensor:
    """The weights with which PixelSNAIL's attention blocks read each earlier pixel for ``pixel``'s prediction, for
    the first image, averaged over heads: ``(blocks, H, W)`` (zero at the pixel itself and after it)."""
    if not isinstance(model, PixelSNAIL):
        raise ConfigError(f"snail_attention needs a PixelSNAIL model, got {type(model).__name__}")
    index = _check_pixel(model, pixel)
    c = model.config
    with eval_mode(model), capture_attention(model) as capture:
        model(images[:1], None if labels is None else labels[:1])
    return torch.stack([capture.weights(i)[0, :, index].mean(0).view(c.height, c.width) for i in capture.layers])


def pixel_explorer(
    model: PixelModel, image: Tensor, label: Tensor | None, pixel: tuple[int, int], *, title: str = "pixel fields"
) -> Explorer:
    """The explorer of an image model's pixel fields on ``image (1, H, W)``: every pixel's maps (:func:`pixel_maps`)
    up to ``FIELD_PAGE_LIMIT`` pixels (else ``pixel``'s alone), opened on ``pixel``; a pixel Transformer's own
    attention over the sequence in the attention views too. Shows inline in a notebook; ``.save(path)`` writes a
    page."""
    c = model.config
    chosen = _check_pixel(model, pixel)
    every = list(range(c.pixels)) if c.pixels <= FIELD_PAGE_LIMIT else [chosen]
    per_pixel = [pixel_maps(model, image, label, divmod(p, c.width)) for p in every]
    maps = {key: torch.stack([m[key].cpu() for m in per_pixel]) for key in per_pixel[0]}
    fields = PixelFields(maps, every, image[0].cpu(), c.levels, chosen)
    kinds = []
    if isinstance(model, PixelTransformer):  # its own weights over the sequence, for the attention views
        attentions = [w[0].cpu() for w in model.attention(image, label)]
        values = image[0].flatten().tolist()
        tokens = ["start"] + [f"{p // c.width},{p % c.width}={values[p]}" for p in range(c.pixels - 1)]
        kinds.append(AttentionKind("self-attention", attentions, tokens))
    return Explorer.of(kinds, title=title, pixel_fields=fields)
