"""MNIST from its four IDX files, as the binarized-MNIST literature splits it; nothing is downloaded.

A directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each may be gzipped, ``.gz``) is read as MNIST: 28 × 28 images of 256 grey levels and
their digits. The split is the literature's (MADE, PixelCNN, PixelRNN): the first 50,000 training images train, the
last 10,000 validate, the 10,000 t10k images test (a training file of another size: its last sixth validates).

Binarized, a pixel of grey level ``g`` is on with probability ``g / 255``, drawn once per pixel from a counter-based
hash of ``(seed, image, pixel)`` (splitmix64): the same seed gives the same binary images on any machine, with any
NumPy or PyTorch, so a run's seed (``data.seed``, saved with its config) is its binarization.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from qkv.errors import ConfigError

__all__ = ["IDX_FILES", "binarize", "is_mnist_directory", "load_mnist", "read_idx"]

IDX_FILES = {  # role -> file name (optionally with .gz)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VALID = 10_000  # the last training images: the validation split
_UBYTE = 0x08  # the IDX type code of unsigned bytes (MNIST's only type)


def _idx_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def is_mnist_directory(path: str | Path) -> bool:
    """Whether ``path`` is a directory with MNIST's four IDX files (plain or gzipped)."""
    directory = Path(path)
    return directory.is_dir() and all(_idx_path(directory, name) for name in IDX_FILES.values())


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a uint8 array of the shape its header gives.

    The header: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions, then each dimension
    as a big-endian uint32; the data follows, row-major. A file that does not match its header is refused, naming
    what is wrong.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise ConfigError(f"{path} could not be read as {'gzip' if path.suffix == '.gz' else 'IDX'}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path} is not an IDX file: it must start with two zero bytes, a type code and a rank")
    if raw[2] != _UBYTE:
        raise ConfigError(f"{path} holds IDX type 0x{raw[2]:02x}; MNIST's files hold unsigned bytes (0x08)")
    rank = raw[3]
    header = 4 + 4 * rank
    if rank == 0 or len(raw) < header:
        raise ConfigError(f"{path}: its IDX header is cut short (rank {rank}, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=rank, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise ConfigError(f"{path}: its header says {shape} = {size:,} bytes of data, the file holds "
                          f"{len(raw) - header:,}")  # fmt: skip
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea and Flood's splitmix64 finaliser, on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_BINARIZE_CHUNK = 1024  # images per pass: the uint64 temporaries stay a few MB instead of 400 MB each for 60,000


def binarize(images: np.ndarray, seed: int, first: int = 0) -> np.ndarray:
    """Stochastic binarization of uint8 images ``(N, H, W)``: pixel ``p`` of image ``first + n`` is on with
    probability ``level / 255``, decided by ``splitmix64(seed, image, pixel)`` (module docstring). int64 0/1."""
    n, height, width = images.shape
    pixels = height * width
    flat = images.reshape(n, pixels)
    out = np.empty((n, pixels), dtype=np.int64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(1, seed, dtype=np.uint64))
        for start in range(0, n, _BINARIZE_CHUNK):
            stop = min(start + _BINARIZE_CHUNK, n)
            counter = (np.arange(first + start, first + stop, dtype=np.uint64)[:, None] * np.uint64(pixels)
                       + np.arange(pixels, dtype=np.uint64)[None, :])  # fmt: skip
            mixed = _splitmix64(counter ^ key)
            uniform = (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1), 53 random bits
            out[start:stop] = uniform < flat[start:stop] / 255.0
    return out.reshape(images.shape)


def load_mnist(directory: str | Path, binarise: bool = False, seed: int = 0) -> tuple[dict, int]:
    """MNIST's splits from ``directory``: ``({"train" | "valid" | "test": (images (N, 28, 28) int64, labels (N,)
    int64)}, levels)``, levels 256, or 2 with ``binarise`` (stochastic, seeded: module docstring)."""
    directory = Path(directory)
    paths = {role: _idx_path(directory, name) for role, name in IDX_FILES.items()}
    missing = [IDX_FILES[role] for role, path in paths.items() if path is None]
    if missing:
        raise ConfigError(f"{directory} is not an MNIST directory: it lacks {', '.join(missing)} (or .gz)")
    arrays = {role: read_idx(path) for role, path in paths.items() if path is not None}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"{directory}: the {part} images {images.shape} and labels {labels.shape} do not pair up "
                              "(images (N, H, W), labels (N,))")  # fmt: skip
    train_images, test_images = arrays["train_images"], arrays["test_images"]
    if binarise:  # one numbering over all images, training file first: each pixel has its own draw
        train_images = binarize(train_images, seed)
        test_images = binarize(test_images, seed, first=len(train_images))
    n_valid = VALID if len(train_images) >= 2 * VALID else len(train_images) // 6
    n_train = len(train_images) - n_valid

    def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.asarray(images, np.int64)), torch.from_numpy(labels.astype(np.int64))

    splits = {
        "train": tensors(train_images[:n_train], arrays["train_labels"][:n_train]),
        "valid": tensors(train_images[n_train:], arrays["train_labels"][n_train:]),
        "test": tensors(test_images, arrays["test_labels"]),
    }
    return splits, 2 if binarise else 256
