"""Grey-level images for autoregressive image models: the 8×8 handwritten digits shipped inside scikit-learn
(1,797 images, levels 0-16, ten classes; no download), MNIST from a directory of its four IDX files
(:mod:`qkv.data.mnist`: 28 × 28, 256 levels or stochastically binarized, the literature's split), or the user's own
images (a folder of PNGs or an ``.npy`` array ``(N, H, W)`` of integer levels).

Images are integer tensors ``(N, H, W)`` with values in ``[0, levels)``; MNIST keeps its fixed split, the others are
split train/valid/test by a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.data.mnist import is_mnist_directory, load_mnist
from qkv.errors import ConfigError

__all__ = ["ImageData", "ImageSet", "load_digits", "load_image_set", "read_images"]

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, valid, test


@dataclass
class ImageSet:
    """Images ``(N, H, W)`` int64 in ``[0, levels)`` and their class labels ``(N,)`` (-1 when there are none)."""

    images: Tensor
    labels: Tensor
    levels: int
    num_classes: int  # 0: unlabelled
    # a fixed split of its own (MNIST's): split name -> (images, labels); None: ImageData splits by seed
    splits: dict[str, tuple[Tensor, Tensor]] | None = None


def load_digits(binarise: bool = False, size: int = 8) -> ImageSet:
    """scikit-learn's 8×8 digits (levels 0-16; ``binarise``: 2 levels, a pixel is on from level 8); ``size`` 16 or
    28 upsamples by nearest neighbour (each pixel becomes a block: the same images, more pixels to model)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:  # pragma: no cover - a dependency of qkv
        raise ConfigError("the digits come with scikit-learn: pip install scikit-learn") from None
    digits = sklearn_digits()
    images = torch.from_numpy(digits.images.astype(np.int64))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    levels = 17
    if binarise:
        images, levels = (images >= 8).long(), 2
    if size != 8:
        if size not in (16, 28):
            raise ConfigError(f"data.size must be 8, 16 or 28 for the digits, got {size}")
        images = F.interpolate(images[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return ImageSet(images, labels, levels, 10)


def read_images(path: str | Path, levels: int = 256) -> ImageSet:
    """A user's images: an ``.npy`` array ``(N, H, W)`` of integer levels in ``[0, levels)``, or a folder of PNGs
    of one size (grey, or colour converted to grey; 8-bit, so ``levels`` = 256 unless the values say fewer).
    Unlabelled."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"data.path {path} does not exist: give a folder of .png files, an .npy array (N, H, W), or "
                          "a directory with MNIST's four IDX files")  # fmt: skip
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise ConfigError(f"data.path {path} holds no .png files (nor MNIST's four IDX files)")
        from matplotlib.image import imread

        arrays = []
        for file in files:
            try:
                pixels = imread(file)
            except (OSError, ValueError, SyntaxError) as exc:
                raise ConfigError(f"{file} is not a readable PNG: {exc}") from None
            if pixels.ndim == 3:  # colour (and alpha): the luminance
                pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
            arrays.append(np.rint(pixels * 255).astype(np.int64))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ConfigError(f"the PNGs in {path} differ in size: {sorted(shapes)[:3]}; images must be one size")
        array = np.stack(arrays)
    elif path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a readable .npy array: {exc}") from None
    else:
        raise ConfigError(f"data.path must be a folder of .png files or an .npy array, got {path}")
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"images must be an integer array (N, H, W), got {array.dtype} of shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= levels):
        raise ConfigError(f"image levels must be in [0, {levels}), got values from {array.min()} to {array.max()}")
    images = torch.from_numpy(array.astype(np.int64))
    return ImageSet(images, torch.full((len(images),), -1, dtype=torch.long), levels, 0)


def load_image_set(path: str = "", binarise: bool = False, size: int = 8, levels: int = 256, seed: int = 0) -> ImageSet:
    """The digits (``path`` empty), MNIST (``path`` a directory of its IDX files; ``binarise``: stochastic, by
    ``seed``) or the user's images at ``path``."""
    if not path:
        return load_digits(binarise, size)
    if is_mnist_directory(path):
        splits, mnist_levels = load_mnist(path, binarise, seed)
        train_images, train_labels = splits["train"]
        return ImageSet(train_images, train_labels, mnist_levels, 10, splits)
    images = read_images(path, levels)
    if binarise:
        images = ImageSet((images.images >= levels // 2).long(), images.labels, 2, 0)
    return images


class ImageData:
    """An image set split into train / valid / test by a seeded permutation, served as ``(images, labels)``
    batches."""

    def __init__(self, images: ImageSet, seed: int = 0) -> None:
        self.set = images
        if images.splits is not None:  # a split of its own (MNIST's)
            self.splits = dict(images.splits)
            return
        n = len(images.images)
        if n < 10:
            raise ConfigError(f"{n} images are too few to split into train, valid and test (at least 10)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_train, n_valid = int(n * SPLIT_FRACTIONS[0]), int(n * SPLIT_FRACTIONS[1])
        parts = {
            "train": order[:n_train],
            "valid": order[n_train : n_train + n_valid],
            "test": order[n_train + n_valid :],
        }
        self.splits = {name: (images.images[index], images.labels[index]) for name, index in parts.items()}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.set.images.shape[1:])  # type: ignore[return-value]  # ((height, width) of 3-D images)

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(images (batch, H, W), labels (batch,))`` of step ``step``, drawn with replacement (``val`` reads the
        valid split)."""
        images, labels = self.splits["train" if split == "train" else "valid"]
        g = torch.Generator().manual_seed(seed * 1_000_003 + step * 2 + (split != "train"))
        index = torch.randint(len(images), (batch_size,), generator=g)
        if rows is not None:
            index = index[rows]
        return images[index], labels[index]
