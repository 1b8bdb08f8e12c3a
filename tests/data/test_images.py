"""Image data: scikit-learn's digits as bundled (1,797 images, 17 levels, 10 classes), a seeded split, binarising,
upsampling; users' .npy arrays and PNG folders; bad inputs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qkv.data.images import ImageData, load_digits, load_image_set, read_images
from qkv.errors import ConfigError


def test_the_digits_are_scikit_learns():
    from sklearn.datasets import load_digits as sklearn_digits

    digits = load_digits()
    reference = sklearn_digits()
    assert digits.images.shape == (1797, 8, 8) and digits.levels == 17 and digits.num_classes == 10
    assert torch.equal(digits.images, torch.from_numpy(reference.images.astype(np.int64)))
    assert torch.equal(digits.labels, torch.from_numpy(reference.target.astype(np.int64)))
    binary = load_digits(binarise=True)
    assert binary.levels == 2 and torch.equal(binary.images, (digits.images >= 8).long())
    big = load_digits(size=16)
    assert big.images.shape == (1797, 16, 16) and torch.equal(big.images[:, ::2, ::2], digits.images)


def test_the_split_is_fixed_by_the_seed_and_covers_every_image_once():
    data = ImageData(load_digits(), seed=0)
    sizes = {name: len(images) for name, (images, _) in data.splits.items()}
    assert sizes == {"train": 1437, "valid": 179, "test": 181}
    again = ImageData(load_digits(), seed=0)
    assert all(torch.equal(data.splits[k][0], again.splits[k][0]) for k in data.splits)
    other = ImageData(load_digits(), seed=1)
    assert not torch.equal(data.splits["test"][0], other.splits["test"][0])
    images, labels = data.batch("train", 16, seed=3, step=7)
    assert images.shape == (16, 8, 8) and labels.shape == (16,)
    assert torch.equal(images, data.batch("train", 16, seed=3, step=7)[0])


def test_users_images_from_npy_and_pngs(tmp_path):
    from matplotlib.image import imsave

    array = np.random.default_rng(0).integers(0, 4, (12, 5, 6))
    np.save(tmp_path / "images.npy", array)
    loaded = read_images(tmp_path / "images.npy", levels=4)
    assert torch.equal(loaded.images, torch.from_numpy(array)) and loaded.num_classes == 0
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        imsave(folder / f"{i}.png", array[i] / 255.0, cmap="gray", vmin=0, vmax=1)
    pngs = read_images(folder)
    assert pngs.images.shape == (3, 5, 6)
    assert torch.equal(pngs.images, torch.from_numpy(array[:3]))
    assert load_image_set(str(tmp_path / "images.npy"), binarise=True, levels=4).levels == 2


def test_bad_images_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_images(tmp_path / "nothing.npy")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ConfigError, match=r"integer array \(N, H, W\)"):
        read_images(tmp_path / "flat.npy")
    np.save(tmp_path / "floats.npy", np.zeros((4, 4, 4)))
    with pytest.raises(ConfigError, match=r"integer array \(N, H, W\)"):
        read_images(tmp_path / "floats.npy")
    np.save(tmp_path / "big.npy", np.full((4, 4, 4), 300))
    with pytest.raises(ConfigError, match=r"levels must be in \[0, 256\), got values from 300 to 300"):
        read_images(tmp_path / "big.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .png files"):
        read_images(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="a folder of .png files or an .npy array"):
        read_images(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="8, 16 or 28"):
        load_digits(size=12)
    np.save(tmp_path / "few.npy", np.zeros((5, 4, 4), dtype=np.int64))
    with pytest.raises(ConfigError, match="too few"):
        ImageData(read_images(tmp_path / "few.npy"))
