"""Each bundled MNIST config trains a few steps on binarized MNIST and reports the papers' unit, nats per image on
the test set, with bits per dimension beside it (the same likelihood: nats = bits/dim × 784 × ln 2); without the IDX
files the configs say where to put them."""

from __future__ import annotations

import json
import math

import pytest

from qkv.cli import main
from qkv.runs import load_image_model
from tests.data.test_mnist import MNIST, needs_mnist

CPU_CONFIGS = ["mnist-made", "mnist-made-ensemble", "mnist-pixelcnn", "mnist-gated", "mnist-pixelsnail",
               "mnist-pixelrnn", "mnist-transformer"]  # fmt: skip
GPU_CONFIGS = ["mnist-pixelcnn-gpu", "mnist-gated-gpu", "mnist-pixelsnail-gpu", "mnist-transformer-gpu"]
CONFIGS = CPU_CONFIGS + GPU_CONFIGS  # (the GPU ones at their full size, for two steps on this machine's device)


@needs_mnist
@pytest.mark.parametrize("name", CONFIGS)
def test_each_mnist_config_trains_and_reports_test_nats(name, tmp_path):
    out = tmp_path / name
    caps = ["train.steps=2", "train.batch_size=4", "train.eval_iters=1", "train.eval_interval=2",
            "train.checkpoint_interval=2", "data.test_images=8", f"data.path={str(MNIST)!r}"]  # fmt: skip
    assert main(["train", name, "--out", str(out), "--no-progress", *[a for c in caps for a in ("--set", c)]]) == 0
    evaluation = json.loads((out / "metrics.json").read_text())["evaluation"]
    assert evaluation["test"]["images"] == 8
    assert evaluation["test_nats"] == pytest.approx(evaluation["test_bits_per_dim"] * 784 * math.log(2), rel=1e-4)
    assert 0 < evaluation["test_nats"] < 784 * math.log(2) * 1.5  # an untrained model: near a coin per pixel


def test_an_mnist_config_without_the_files_says_where_to_put_them(tmp_path, capsys):
    assert (
        main(["train", "mnist-made", "--out", str(tmp_path / "r"), "--set", f"data.path={str(tmp_path / 'no')!r}"]) == 2
    )
    assert "a directory with MNIST's four IDX files" in capsys.readouterr().err


@needs_mnist
def test_256_levels_and_class_conditional_as_the_text_tells_it(tmp_path, capsys):
    """data.binarise = false: a 256-way softmax per pixel, bits/dim reported (and nats per image, the same number
    in other units); data.conditional = true: the label enters every gated layer and `qkv sample --class` draws
    that digit, each sample beside its nearest training image."""
    out = tmp_path / "gated256"
    caps = ["train.steps=2", "train.batch_size=4", "train.eval_iters=1", "train.eval_interval=2",
            "train.checkpoint_interval=2", "data.test_images=8", f"data.path={str(MNIST)!r}", "data.binarise=false",
            "data.conditional=true", "model.hidden=16", "model.layers=2"]  # fmt: skip
    sets = [a for c in caps for a in ("--set", c)]
    assert main(["train", "mnist-gated", "--out", str(out), "--no-progress", *sets]) == 0
    evaluation = json.loads((out / "metrics.json").read_text())["evaluation"]
    assert evaluation["test_nats"] == pytest.approx(evaluation["test_bits_per_dim"] * 784 * math.log(2), rel=1e-4)
    assert 6.0 < evaluation["test_bits_per_dim"] < 8.0 * 1.5  # untrained: near log2(256) = 8 bits per pixel
    model, _ = load_image_model(out)
    assert model.config.levels == 256 and model.config.num_classes == 10
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "2", "--class", "3", "--seed", "0", "--png", str(tmp_path / "s.png")]) == 0
    printed = capsys.readouterr().out
    assert "2 samples of (28, 28) pixels, 256 levels" in printed and "nearest training image" in printed
    assert (tmp_path / "s.png").stat().st_size > 0
