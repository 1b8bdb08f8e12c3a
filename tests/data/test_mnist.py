"""MNIST from IDX files: the format read against its header (hand-made files), the shipped files against MNIST's own
checksums and class counts, the literature's split, and a stochastic binarization reproducible from its seed with
each pixel on with probability level / 255."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.data.images import ImageData, load_image_set
from qkv.data.mnist import _splitmix64, binarize, is_mnist_directory, load_mnist, read_idx
from qkv.errors import ConfigError

ROOT = Path(__file__).parents[2]
MNIST = Path(os.environ.get("QKV_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(not is_mnist_directory(MNIST), reason=f"no MNIST IDX files in {MNIST}")
# sha256 of each file's decompressed bytes: MNIST's content whatever the gzip settings
CHECKSUMS = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST's, per digit


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand from its definition: 0, 0, type 0x08, rank, big-endian dimensions, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_follows_the_header_plain_or_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, array)
    labels = np.array([7, 1, 9], dtype=np.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    assert np.array_equal(read_idx(tmp_path / "l"), labels)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "is not an IDX file"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00", r"IDX type 0x0d; MNIST's files"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "header is cut short"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x00" * 5, r"\(2, 3\) = 6 bytes of data, the file holds 5"),
    ],
)
def test_a_broken_idx_file_is_named(tmp_path, content, message):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_idx(tmp_path / "x")
    (tmp_path / "x.gz").write_bytes(content)  # not gzip at all
    with pytest.raises(ConfigError, match="could not be read as gzip"):
        read_idx(tmp_path / "x.gz")


def test_a_directory_without_the_four_files_is_not_mnist(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8)))
    assert not is_mnist_directory(tmp_path)
    with pytest.raises(ConfigError, match="lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_splitmix64_is_the_published_generator():
    # splitmix64 from state 0: its first outputs (Vigna's reference implementation)
    states = np.array([k * 0x9E3779B97F4A7C15 % 2**64 for k in range(4)], dtype=np.uint64)  # state before each step
    assert [f"{int(x):016x}" for x in _splitmix64(states)] == [
        "e220a8397b1dcdaf", "6e789e6aa1b965f4", "06c45d188009454f", "f88bb8a8724c81ec"]  # fmt: skip


def test_binarization_is_reproducible_counter_based_and_has_the_right_odds():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    once, again = binarize(images, seed=3), binarize(images, seed=3)
    assert np.array_equal(once, again) and set(np.unique(once)) <= {0, 1}
    assert not np.array_equal(once, binarize(images, seed=4))
    assert np.array_equal(binarize(images[100:], seed=3, first=100), once[100:])  # each pixel its own draw
    assert (binarize(np.zeros_like(images), 3) == 0).all() and (binarize(np.full_like(images, 255), 3) == 1).all()
    half = binarize(np.full((2000, 28, 28), 64, np.uint8), seed=5).mean()  # p = 64 / 255 over 1.6 M pixels
    assert abs(half - 64 / 255) < 4 * np.sqrt(0.25 / 1.568e6)


def test_binarization_of_many_images_is_the_definition_pixel_by_pixel():
    """Pixels on both sides of the chunks binarize works in (1,024 images): pixel p of image i is on iff
    splitmix64((first + i) * 784 + p XOR splitmix64(seed)), its top 53 bits as a fraction, is below level / 255."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2500, 28, 28), dtype=np.uint8)
    out = binarize(images, seed=9, first=7)
    key = _splitmix64(np.full(1, 9, dtype=np.uint64))
    with np.errstate(over="ignore"):
        for i, p in [(0, 0), (1023, 783), (1024, 0), (2047, 500), (2048, 1), (2499, 783)]:
            draw = _splitmix64(np.array([(7 + i) * 784 + p], dtype=np.uint64) ^ key)[0]
            uniform = int(draw >> np.uint64(11)) * 2.0**-53
            assert out[i].reshape(-1)[p] == int(uniform < images[i].reshape(-1)[p] / 255.0), (i, p)


@needs_mnist
def test_the_shipped_files_are_mnist():
    for name, digest in CHECKSUMS.items():
        path = MNIST / f"{name}.gz" if (MNIST / f"{name}.gz").exists() else MNIST / name
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest, name
        count = 60000 if name.startswith("train") else 10000
        assert read_idx(path).shape == ((count, 28, 28) if "images" in name else (count,))
    labels = read_idx(MNIST / "train-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == TRAIN_CLASS_COUNTS


@needs_mnist
def test_the_literatures_split_and_its_binarization():
    grey = load_image_set(str(MNIST))
    assert grey.levels == 256 and grey.num_classes == 10
    data = ImageData(grey, seed=123)  # MNIST's split is fixed: the seed does not move it
    sizes = {name: len(images) for name, (images, _) in data.splits.items()}
    assert sizes == {"train": 50000, "valid": 10000, "test": 10000} and data.shape == (28, 28)
    train_file = torch.from_numpy(read_idx(MNIST / "train-images-idx3-ubyte.gz").astype(np.int64))
    assert torch.equal(data.splits["train"][0], train_file[:50000])
    assert torch.equal(data.splits["valid"][0], train_file[50000:])  # the last 10,000 validate
    binary = load_image_set(str(MNIST), binarise=True, seed=7)
    assert binary.levels == 2
    again = load_image_set(str(MNIST), binarise=True, seed=7)
    for name in ("train", "valid", "test"):
        assert torch.equal(binary.splits[name][0], again.splits[name][0])
    mean = float(binary.splits["train"][0].double().mean())
    assert abs(mean - float(train_file[:50000].double().mean()) / 255) < 1e-3  # E[on] = level / 255
