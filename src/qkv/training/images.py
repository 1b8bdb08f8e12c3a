"""Image modelling as a training task: an image set + an autoregressive image model + per-pixel cross-entropy; at
the end, the exact test negative log-likelihood in bits per dimension (from the model's own factorisation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.images import ImageData, load_image_set
from qkv.errors import CheckpointError, ConfigError
from qkv.models.families import IMAGE, get_family
from qkv.models.modes import eval_mode
from qkv.models.pixels.base import PixelModel, bits_per_dim
from qkv.tokenizers.image import ImageFormat
from qkv.training.config import RunConfig

__all__ = ["ImageTask", "build_images", "run_image_data"]


@dataclass
class ImageTask:
    data: ImageData
    kind: str
    conditional: bool
    eval_batch: int = 256
    test_images: int = 0  # > 0: the report reads only the first this many test images (a quick look)

    @property
    def tokens_per_row(self) -> int:
        return self.data.shape[0] * self.data.shape[1]

    def batch(self, split: str, batch_size: int, seed: int, step: int, rows: slice | None) -> tuple[Tensor, Tensor]:
        return self.data.batch(split, batch_size, seed, step, rows)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean cross-entropy per pixel (nats)."""
        images, labels = batch
        logits = model(images, labels if self.conditional else None).logits
        return F.cross_entropy(logits.float().permute(0, 3, 1, 2), images)

    @torch.no_grad()
    def report(self, model: nn.Module, progress: bool = False) -> dict[str, Any]:
        """Exact negative log-likelihood of the test split (its first ``test_images``, when set), in bits per
        dimension and nats per image: ``{"test": {...}, "test_nats": ..., "test_bits_per_dim": ...}``."""
        device = next(model.parameters()).device
        images, labels = self.data.splits["test"]
        if self.test_images:
            images, labels = images[: self.test_images], labels[: self.test_images]
        pieces = []
        with eval_mode(model):
            for start in range(0, len(images), self.eval_batch):
                chunk = images[start : start + self.eval_batch].to(device)
                chunk_labels = labels[start : start + self.eval_batch].to(device) if self.conditional else None
                pieces.append(cast(PixelModel, model).log_prob(chunk, chunk_labels).cpu())
        log_p = torch.cat(pieces)
        nats, bits = round(float(-log_p.double().mean()), 4), round(bits_per_dim(log_p, self.tokens_per_row), 5)
        return {
            "test": {"images": len(images), "bits_per_dim": bits, "nll_nats_per_image": nats},
            "test_nats": nats,  # the binarized-MNIST tables' unit: nats per image
            "test_bits_per_dim": bits,
        }


def build_images(
    config: RunConfig, image_format: ImageFormat | None = None
) -> tuple[nn.Module, ImageTask, ImageFormat]:
    """The model, task and image format of an image run (a format from a checkpoint is checked against the data)."""
    family = get_family(config.kind, protocol=IMAGE)
    d, m = config.data, config.model
    images = load_image_set(d.path, d.binarise, d.size, d.levels, d.seed)
    if d.conditional and not images.num_classes:
        raise ConfigError(f"data.conditional = true needs labelled images; {d.path} has no classes")
    height, width = images.images.shape[1:]
    fmt = ImageFormat(height, width, images.levels, images.num_classes if d.conditional else 0)
    if image_format is not None and image_format != fmt:
        raise CheckpointError(f"the run was trained on images {image_format}, but the data now gives {fmt}")
    m.height, m.width, m.levels, m.num_classes = fmt.height, fmt.width, fmt.levels, fmt.num_classes
    m.validate()
    torch.manual_seed(config.train.seed)  # the same initial weights on every process and every run
    model = family.build(m)
    return model, ImageTask(ImageData(images, d.seed), config.kind, d.conditional, test_images=d.test_images), fmt


def run_image_data(run_config: dict[str, Any]) -> ImageData:
    """The images (and their split) a run trained on, from its saved config (``CheckpointInfo.meta["config"]``)."""
    d = run_config["data"]
    return ImageData(load_image_set(d["path"], d["binarise"], d["size"], d["levels"], d["seed"]), d["seed"])
