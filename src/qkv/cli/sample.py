"""``qkv sample``: images from a trained autoregressive image model, each beside its nearest training image."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.cli.common import add_device_option

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="sample images from a trained image model (PixelCNN, MADE, pixel Transformer, ...)",
        description="Generate N images pixel by pixel from the image model in RUN and draw them (--png), each beside "
        "its nearest training image (L2) with the distance: a sample at distance 0 would be a copy. A "
        "class-conditional model samples --class (default: the classes in turn).",
    )
    p.add_argument("run_dir", metavar="RUN", help="a run or checkpoint directory of qkv train configs/digits-*.toml")
    p.add_argument("--class", dest="label", type=int, help="the class to sample (class-conditional models)")
    p.add_argument("--n", type=int, default=16, help="how many images (default 16)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (default 1)")
    p.add_argument("--png", type=Path, help="draw the samples here (.png, .svg or .pdf)")
    p.add_argument("--out", type=Path, help="also save the images as an .npy array (n, H, W) of levels")
    add_device_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from qkv.cli.common import check_output_files, on_interrupt
    from qkv.decoding.images import check_sample_count, sample_images
    from qkv.errors import ConfigError
    from qkv.runs import load_image_model
    from qkv.training.images import run_image_data
    from qkv.visualization.grid import IMAGE_SUFFIXES
    from qkv.visualization.images import nearest_images, plot_samples

    check_output_files({"png": IMAGE_SUFFIXES, "out": (".npy",)}, png=args.png, out=args.out)
    model, info = load_image_model(args.run_dir, args.device)
    classes = model.config.num_classes
    if args.label is not None and not classes:
        raise ConfigError("--class: this model is not class-conditional (train it with data.conditional = true)")
    if args.label is not None and not 0 <= args.label < classes:
        raise ConfigError(f"--class {args.label} is not a class of this model: choose one in [0, {classes})")
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    check_sample_count(model, args.n)  # before the labels: --n 1000000000 would build 8 GB of them first
    labels = None
    if classes:
        labels = torch.full((args.n,), args.label) if args.label is not None else torch.arange(args.n) % classes
    with on_interrupt(f"sampling {args.n} image{'s' if args.n > 1 else ''}"):
        images = sample_images(model, args.n, labels, seed=args.seed, temperature=args.temperature).cpu()
    training = run_image_data(info.meta["config"]).splits["train"][0]
    index, distances = nearest_images(images, training)
    print(f"{args.n} samples of {tuple(images.shape[1:])} pixels, {model.config.levels} levels")
    print(f"nearest training image (L2 over levels): mean {float(distances.mean()):.2f}, min "
          f"{float(distances.min()):.2f} (0 would be a copy)")  # fmt: skip
    if args.png is not None:
        title = f"{Path(args.run_dir).name}: samples (left) and their nearest training images (right)"
        path = plot_samples(
            images, args.png, levels=model.config.levels, labels=labels, nearest=training[index],
            distances=distances, title=title,
        )  # fmt: skip
        print(f"written: {path}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, images.numpy())
        print(f"written: {args.out}")
    return 0
