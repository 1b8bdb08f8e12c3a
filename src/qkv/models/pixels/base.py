"""What every autoregressive image model shares: its config, the per-pixel interface and the exact likelihood.

An image ``(batch, H, W)`` of integer levels in ``[0, levels)`` is a sequence of ``H · W`` pixels in raster order
(row by row, left to right); a model gives every pixel a ``levels``-way distribution conditioned on the pixels
before it (and on a class label when ``num_classes > 0``)::

    p(x) = prod_d p(x_d | x_<d, label)

Every model is ``predict(embed(images), labels)``: ``embed`` turns the levels into a continuous input ``(batch, H,
W, channels)`` and ``predict`` maps it to logits ``(batch, H, W, levels)``. The split lets the autoregressive
property be checked by gradients: the logits of pixel d must not depend on the input at d or after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.models.config import ModelConfig
from qkv.models.output import ModelOutput

__all__ = [
    "PixelConfig",
    "PixelModel",
    "PixelSNAILConfig",
    "SequencePixelModel",
    "bits_per_dim",
    "condition",
    "label_embedding",
    "pixel_log_probs",
]

CELLS = ("gru", "lstm")
ORDERINGS = ("raster", "random")


@dataclass
class PixelConfig(ModelConfig):
    """One config for every image family (each reads the fields it needs)."""

    height: int = 8
    width: int = 8
    levels: int = 17  # grey levels (the digits: 0-16; binarised: 2)
    num_classes: int = 0  # > 0: class-conditional (a label per image)
    hidden: int = 64  # channels (PixelCNN), hidden units (RNN, MADE), embedding width (Transformer)
    layers: int = 4
    kernel: int = 3  # PixelCNN / Gated PixelCNN layers after the first
    first_kernel: int = 7  # PixelCNN's type-A layer
    cell: Literal["gru", "lstm"] = "gru"  # pixel RNN
    positions: bool = True  # pixel RNN: add a position embedding of the predicted pixel
    num_masks: int = 4  # MADE: connectivity masks (cycled in training, ensembled for the likelihood)
    ordering: Literal["raster", "random"] = "raster"  # MADE: random = each mask its own input ordering
    num_heads: int = 4  # Transformer
    window: int = 0  # Transformer: > 0 restricts attention to pixels at most this many rows up and columns aside
    attention_every: int = 2  # PixelSNAIL: an attention block after every this many gated layers (and the last)
    dropout: float = 0.0
    backend: str = "auto"

    def validate(self) -> None:
        self.check_positive(
            "height", "width", "hidden", "layers", "kernel", "first_kernel", "num_masks", "num_heads", "attention_every"
        )
        if self.levels < 2:
            raise ConfigError(f"model.levels must be >= 2, got {self.levels}")
        if self.num_classes < 0 or self.window < 0:
            raise ConfigError("model.num_classes and model.window must be >= 0")
        if self.kernel % 2 == 0 or self.first_kernel % 2 == 0:
            raise ConfigError(f"model.kernel and first_kernel must be odd, got {self.kernel}, {self.first_kernel}")
        self.check_choice("cell")
        self.check_choice("ordering")
        self.check_dropout()

    @property
    def pixels(self) -> int:
        return self.height * self.width


class PixelModel(nn.Module):
    """Base class: subclasses set ``self.config`` and define ``embed`` and ``predict``."""

    config: PixelConfig

    def embed(self, images: Tensor) -> Tensor:  # pragma: no cover - every model overrides it
        """``(batch, H, W)`` levels -> ``(batch, H, W, channels)``."""
        raise NotImplementedError

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:  # pragma: no cover
        """``(batch, H, W, channels)`` -> logits ``(batch, H, W, levels)``; pixel d sees only inputs before d."""
        raise NotImplementedError

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """Logits ``(batch, H, W, levels)`` of every pixel given the pixels before it (and ``labels (batch,)``)."""
        self.check_input(images, labels)
        return ModelOutput(logits=self.predict(self.embed(images), labels))

    def log_prob(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact ``log p(image)`` in nats, ``(batch,)``: the sum of every pixel's log-probability."""
        return pixel_log_probs(self(images, labels).logits, images)

    def as_float(self, images: Tensor) -> Tensor:
        """``images`` in the model's floating dtype (for models that read the levels as numbers)."""
        return images.to(next(self.parameters()).dtype)

    def sampling_order(self) -> list[int]:
        """The order in which pixels (raster indices) are generated: the model's factorisation."""
        return list(range(self.config.pixels))

    def check_input(self, images: Tensor, labels: Tensor | None) -> None:
        c = self.config
        if images.dim() != 3 or tuple(images.shape[1:]) != (c.height, c.width) or images.dtype != torch.long:
            raise ShapeError(
                f"images must be int64 (batch, {c.height}, {c.width}), got {images.dtype} "
                f"{describe_shape(images.shape)}"
            )
        if images.numel():
            low, high = (int(v) for v in torch.aminmax(images))
            if low < 0 or high >= c.levels:
                raise ShapeError(f"pixel levels must be in [0, {c.levels}), got {low if low < 0 else high}")
        if c.num_classes and labels is None:
            raise ConfigError(f"this model is class-conditional ({c.num_classes} classes): give labels")
        if not c.num_classes and labels is not None and bool((labels >= 0).any()):
            raise ConfigError("this model is not class-conditional: it takes no labels")
        if labels is not None and c.num_classes:
            if labels.shape != images.shape[:1]:
                raise ShapeError(f"labels must be ({images.shape[0]},), got {describe_shape(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c.num_classes):
                raise ConfigError(f"labels must be classes in [0, {c.num_classes}), got {labels.tolist()[:8]}")


class SequencePixelModel(PixelModel):
    """A model that reads the pixels as a sequence: position d reads pixel d - 1 (a learned start vector, plus the
    class embedding when conditional, at d = 0) and predicts pixel d."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.token = nn.Embedding(config.levels, config.hidden)
        self.start = nn.Parameter(torch.zeros(config.hidden))
        self.label = label_embedding(config, config.hidden)

    def embed(self, images: Tensor) -> Tensor:
        return self.token(images)  # (batch, H, W, hidden)

    def first_input(self, labels: Tensor | None, batch: int) -> Tensor:
        """``(batch, hidden)``: what position 0 reads."""
        return self.start + condition(self.label, labels, batch, self.config.hidden, self.start[None])

    def shifted(self, features: Tensor, labels: Tensor | None) -> Tensor:
        """``(batch, H, W, hidden)`` -> the inputs ``(batch, pixels, hidden)``: the start, then pixels 0 .. D-2."""
        batch = features.shape[0]
        sequence = features.reshape(batch, self.config.pixels, -1)
        return torch.cat([self.first_input(labels, batch)[:, None], sequence[:, :-1]], dim=1)


def pixel_log_probs(logits: Tensor, images: Tensor) -> Tensor:
    """``log p(image)`` ``(batch,)`` from logits ``(batch, H, W, levels)``: the sum of the pixels' log-probabilities
    (in fp32 at least)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -F.cross_entropy(logits.permute(0, 3, 1, 2), images, reduction="none").sum(dim=(1, 2))


def bits_per_dim(nats: Tensor, pixels: int) -> float:
    """Mean negative log-likelihood per pixel in bits from per-image ``log p`` in nats ``(batch,)``."""
    return float(-nats.double().mean() / (pixels * math.log(2)))


def label_embedding(config: PixelConfig, dim: int) -> nn.Embedding | None:
    """A class embedding ``(num_classes, dim)`` for a class-conditional model, else None."""
    return nn.Embedding(config.num_classes, dim) if config.num_classes else None


def condition(embedding: nn.Embedding | None, labels: Tensor | None, batch: int, dim: int, like: Tensor) -> Tensor:
    """``(batch, dim)``: the labels' embeddings, or zeros for an unconditional model."""
    if embedding is None or labels is None:
        return like.new_zeros(batch, dim)
    return embedding(labels)


# One config class per family (no new fields): a checkpoint's config class names its family (families.family_of).
class IndependentConfig(PixelConfig):
    pass


class PixelRNNConfig(PixelConfig):
    pass


class MADEConfig(PixelConfig):
    pass


class PixelCNNConfig(PixelConfig):
    pass


class GatedPixelCNNConfig(PixelConfig):
    pass


class PixelTransformerConfig(PixelConfig):
    def validate(self) -> None:
        super().validate()
        if self.hidden % self.num_heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads})")


class PixelSNAILConfig(GatedPixelCNNConfig):  # (a Gated PixelCNN with attention: family_of picks the subclass)
    def validate(self) -> None:
        super().validate()
        if self.hidden % self.num_heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads})")
