"""Sampling images from an autoregressive image model, one pixel at a time in the model's order.

Every model can be sampled by recomputation (the whole image through the model for each pixel, reading the next
pixel's distribution); the pixel Transformer also on its KV cache (one position per step), Gated PixelCNN and
PixelSNAIL on caches of their stacks and attention keys (:mod:`qkv.models.pixels.cached`): each draws the same pixels
from the same generator as recomputation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.attention.frozen import frozen_weights
from qkv.attention.memory import check_fits
from qkv.decoding.controls import check_sampling
from qkv.errors import ConfigError
from qkv.models.modes import eval_mode
from qkv.models.pixels.base import PixelModel
from qkv.models.pixels.convolutional import GatedPixelCNN
from qkv.models.pixels.transformer import PixelTransformer

__all__ = ["check_sample_count", "sample_images"]


def check_sample_count(model: PixelModel, n: int) -> None:
    """Raise a ConfigError unless ``n >= 1`` images fit in memory: the logits of every image alone (each pixel's
    distribution over the levels, float32). Callers that build per-image tensors first (labels) check here before."""
    c = model.config
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    check_fits(
        n * c.pixels * c.levels * 4,
        f"{n} image{'s' if n > 1 else ''} of {c.height}x{c.width} pixels with {c.levels} levels",
        "sample fewer images at a time",
        next(model.parameters()).device,
    )


@torch.no_grad()
def sample_images(
    model: PixelModel,
    n: int,
    labels: Tensor | int | None = None,
    *,
    seed: int | None = None,
    temperature: float = 1.0,
    cached: bool = True,
) -> Tensor:
    """``n`` images ``(n, H, W)`` of levels.

    Args:
        labels: a class for every image (an int, or ``(n,)``); required by a class-conditional model, refused by an
            unconditional one.
        seed: a fixed seed gives the same images every time (on the same device).
        temperature: divides the logits before each draw (1: the model's distribution).
        cached: the pixel Transformer samples on its KV cache, Gated PixelCNN and PixelSNAIL on caches of their
            stacks (and attention keys) — False: by recomputation of every pixel, for comparison.
    """
    c = model.config
    check_sample_count(model, n)
    check_sampling(temperature)
    device = next(model.parameters()).device
    if isinstance(labels, int):
        labels = torch.full((n,), labels, dtype=torch.long)
    if labels is not None:
        if not c.num_classes:
            raise ConfigError("this model is not class-conditional: it samples without a class")
        labels = labels.to(device)
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= c.num_classes:
            raise ConfigError(f"labels must be {n} classes in [0, {c.num_classes}), got {labels.tolist()[:8]}")
    elif c.num_classes:
        raise ConfigError(f"this model is class-conditional: give a class in [0, {c.num_classes})")
    generator = torch.Generator(device=device)
    generator.manual_seed(torch.seed() if seed is None else seed)
    with eval_mode(model), frozen_weights():  # one forward per pixel with the same weights: derived tensors kept
        if cached and isinstance(model, (PixelTransformer, GatedPixelCNN)):  # (PixelSNAIL: a GatedPixelCNN)
            return model.sample_cached(labels, n, generator=generator, temperature=temperature)
        images = torch.zeros(n, c.height, c.width, dtype=torch.long, device=device)
        for index in model.sampling_order():
            row, column = divmod(index, c.width)
            logits = model(images, labels).logits[:, row, column].float() / temperature
            images[:, row, column] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        return images
