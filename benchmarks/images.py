"""Autoregressive image models on the 8x8 digits: test bits/dim of every model with its config's budget, and the pixel
Transformer's sampling on its KV cache against recomputation.

    python benchmarks/images.py              # writes benchmarks/results/images.md (about 15 minutes on 2 cores)
    python benchmarks/images.py --steps 50   # a quick look (every config cut to 50 steps)
    python benchmarks/images.py --mnist DIR  # binarized MNIST against the papers' tables: images-mnist.md
    python benchmarks/images.py --mnist DIR --models made,pixelcnn --minutes 20   # some models, a time budget each
    python benchmarks/images.py --mnist DIR --models gated --steps 6200           # a step count instead

The MNIST mode is described in ``benchmarks/images_mnist.py``.

Each model trains with ``qkv train configs/digits-<name>.toml`` (class-conditional, training precision "auto") and
reports the exact test negative log-likelihood from its own factorisation (MADE: its mask ensemble). Targets: every
autoregressive model at least 15% fewer bits/dim than the no-context baseline, Gated PixelCNN better than PixelCNN,
cached sampling at least 3x faster than recomputation. A grid of the Transformer's samples with their nearest
training images is written to ``docs/digits-samples.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from images_mnist import MODELS as MNIST_MODELS
from images_mnist import run as run_mnist

from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.cli import main as qkv_main
from qkv.data.mnist import is_mnist_directory
from qkv.decoding.images import sample_images
from qkv.runs import load_image_model

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
MODELS = ("independent", "rnn", "made", "pixelcnn", "gated", "transformer")


def train(name: str, out: Path, steps: int | None) -> tuple[dict, float]:
    """Train ``configs/digits-<name>.toml``; ``(metrics, seconds)``."""
    args = ["train", str(ROOT / "configs" / f"digits-{name}.toml"), "--out", str(out), "--no-progress"]
    if steps is not None:
        args += ["--set", f"train.steps={steps}", "--set", f"train.eval_interval={steps}"]
    start = time.perf_counter()
    assert qkv_main(args) == 0, f"training {name} failed"
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="cut every config to this many steps (default: its own budget)")
    parser.add_argument("--samples", type=int, default=16, help="images per sampling timing (16)")
    parser.add_argument("--mnist", type=Path, metavar="DIR", help="binarized MNIST from MNIST's four IDX files in DIR")
    parser.add_argument(
        "--models", help="with --mnist: which, comma-separated (default: all " + ",".join(MNIST_MODELS) + ")"
    )
    parser.add_argument("--minutes", type=float, help="with --mnist: training minutes per model (default: its steps)")
    args = parser.parse_args()
    if args.mnist is not None:
        models = args.models.split(",") if args.models else list(MNIST_MODELS)
        unknown = sorted(set(models) - set(MNIST_MODELS))
        if unknown:
            parser.error(f"unknown --models {', '.join(unknown)}; choose from {', '.join(MNIST_MODELS)}")
        if not is_mnist_directory(args.mnist):
            parser.error(f"--mnist {args.mnist}: not a directory with MNIST's four IDX files (plain or .gz)")
        if args.minutes is not None and args.minutes <= 0:
            parser.error(f"--minutes must be positive, got {args.minutes:g}")
        if args.minutes is not None and args.steps is not None:
            parser.error("--minutes and --steps each set the training length: give one")
        if args.steps is not None and args.steps <= 0:
            parser.error(f"--steps must be positive, got {args.steps}")
        run_mnist(args.mnist, models, args.minutes, args.samples, args.steps)
        return
    work = scratch_directory("qkv-bench-images-")
    results = {}
    for name in MODELS:
        metrics, seconds = train(name, work / name, args.steps)
        results[name] = (metrics["evaluation"]["test"]["bits_per_dim"], seconds, metrics["steps"], metrics["precision"])
        print(f"{name}: {results[name][0]:.4f} bits/dim, {seconds:.0f} s", flush=True)
    report = Report("Autoregressive image models (8x8 digits, 17 levels)", "python benchmarks/images.py")
    baseline = results["independent"][0]
    for name in MODELS[1:]:
        bpd, seconds, steps, precision = results[name]
        setting = f"configs/digits-{name}.toml, {steps} steps, {seconds:.0f} s, {precision}"
        report.rows.append(
            Row(name, setting, "test bits/dim", bpd, baseline, "no-context baseline", "<= 0.85", unit="bits/dim")
        )
    report.rows.append(
        Row("gated vs plain PixelCNN", "the two configs above", "test bits/dim", results["gated"][0],
            results["pixelcnn"][0], "PixelCNN", "<= 1", unit="bits/dim")
    )  # fmt: skip
    model, _ = load_image_model(work / "transformer")
    labels = torch.arange(args.samples) % model.config.num_classes
    t_cached, t_recomputed = time_pair(
        lambda: sample_images(model, args.samples, labels, seed=0),
        lambda: sample_images(model, args.samples, labels, seed=0, cached=False),
        3,
    )
    same = torch.equal(sample_images(model, args.samples, labels, seed=0),
                       sample_images(model, args.samples, labels, seed=0, cached=False))  # fmt: skip
    report.rows.append(
        Row("Transformer sampling, KV cache", f"{args.samples} images of 64 pixels, one class each", "time per image",
            t_cached / args.samples, t_recomputed / args.samples, "recomputing every pixel", ">= 3", speedup=True)
    )  # fmt: skip
    report.notes.append(f"Cached and recomputed sampling drew identical images: {same}.")
    report.notes.append(
        f"No-context baseline (configs/digits-independent.toml): {baseline:.4f} bits/dim; "
        f"log2(17) = 4.09 bits is a uniform guess."
    )
    report.notes.append("Sampling timed as medians of 3 alternating runs after a warm-up; training is one run each.")
    grid = ROOT / "docs" / "digits-samples.png"
    qkv_main(["sample", str(work / "transformer"), "--n", "16", "--seed", "0", "--png", str(grid)])
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'images.md')}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("images.py: interrupted (Ctrl-C); the results keep the models measured before it", file=sys.stderr)
        raise SystemExit(130) from None
