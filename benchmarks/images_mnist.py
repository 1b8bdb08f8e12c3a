"""The image models on binarized MNIST against the papers' tables (``python benchmarks/images.py --mnist DIR``).

Each model trains with ``qkv train configs/mnist-<name>.toml --set data.path=DIR`` and reports the exact negative
log-likelihood of the full test set (10,000 images) in nats per image, the unit of the tables: MADE 88.40 (one hidden
layer, one mask) and 86.64 (an ensemble of masks), Germain et al. 2015; PixelCNN 81.30 and Row LSTM 80.54,
van den Oord et al. 2016. Gated PixelCNN, PixelSNAIL and the pixel Transformer have no published binarized-MNIST
figure; they are held to the CPU-budget target of 84 nats. ``--minutes M`` gives every model M minutes of training on
this machine (its step count measured by a 20-step probe; the cosine schedule then runs its full course; an hour's
run on two cores has taken 0.61x to 1.04x the budget that way); ``--steps N`` gives every model N steps; without
either, each config's own steps. Results accumulate in ``benchmarks/results/images-mnist.json`` (one entry per model,
with its own date, budget, device and precision), so models may be measured in separate runs; the Markdown table
``images-mnist.md`` is rebuilt from all of them. Each model's samples are drawn beside their nearest training
images (the text's check that the model does not copy) into ``docs/mnist-samples-<name>.png``; Gated PixelCNN's,
PixelSNAIL's and the Transformer's sampling on caches is timed against recomputing every pixel.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.cli import main as qkv_main
from qkv.decoding.images import sample_images
from qkv.devices import describe_hardware
from qkv.runs import load_image_model

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
TABLE = RESULTS / "images-mnist.json"
MODELS = ("made", "made-ensemble", "pixelrnn", "pixelcnn", "gated", "pixelsnail", "transformer")
SAMPLED = ("gated", "pixelsnail", "transformer")  # the models that sample on caches: timed against recomputation
TARGET = 84.0  # nats per image: the CPU-budget target for the convolutional and attention models
PAPERS = {  # model -> (nats per test image, where the figure comes from)
    "made": (88.40, "MADE, 1 hidden layer, 1 mask (Germain et al. 2015)"),
    "made-ensemble": (86.64, "MADE, mask ensemble (Germain et al. 2015)"),
    "pixelrnn": (80.54, "Row LSTM (van den Oord et al. 2016)"),
    "pixelcnn": (81.30, "PixelCNN (van den Oord et al. 2016)"),
    "gated": (TARGET, "CPU-budget target (no published figure)"),
    "pixelsnail": (TARGET, "CPU-budget target (no published figure)"),
    "transformer": (TARGET, "CPU-budget target (no published figure)"),
}


def _train(name: str, data: Path, out: Path, sets: list[str]) -> tuple[dict, float]:
    """``qkv train configs/mnist-<name>.toml`` on MNIST in ``data``; ``(metrics, seconds)``."""
    args = ["train", str(ROOT / "configs" / f"mnist-{name}.toml"), "--out", str(out), "--no-progress"]
    for setting in [f"data.path={json.dumps(str(data))}", *sets]:
        args += ["--set", setting]
    start = time.perf_counter()
    code = qkv_main(args)
    if code == 130:  # (qkv train has said what it kept)
        raise KeyboardInterrupt
    if code != 0:
        raise SystemExit(f"training {name} failed")
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def describe_cpu() -> str:
    """The CPU a row was measured on, in a few words (rows of one table may come from different machines)."""
    hw = describe_hardware(torch.device("cpu"))
    return f"CPU kernels {hw['cpu_capability']}{', native bf16' if hw['cpu_native_bf16'] else ''}"


def steps_for(name: str, data: Path, minutes: float, work: Path) -> int:
    """Training steps that fill ``minutes`` on this machine, from the time per step of a 20-step probe (less 5% for
    the periodic evaluations)."""
    probe, _ = _train(name, data, work / f"{name}-probe", ["train.steps=20", "train.eval_interval=20",
                                                           "train.eval_iters=1", "data.test_images=16"])  # fmt: skip
    return max(100, int(0.95 * minutes * 60e3 / probe["ms_per_iter"]))


def measure(name: str, data: Path, minutes: float | None, work: Path, steps: int | None = None) -> dict:
    """Train one model on its budget (``steps``, else the steps that fill ``minutes``, else its config's); the
    entry the table keeps for it."""
    sets = []
    if steps is None and minutes is not None:
        steps = steps_for(name, data, minutes, work)
    if steps is not None:
        sets = [f"train.steps={steps}", f"train.eval_interval={max(1, steps // 20)}",
                f"train.checkpoint_interval={steps}"]  # fmt: skip
    metrics, seconds = _train(name, data, work / name, sets)
    evaluation = metrics["evaluation"]
    return {
        "test_nats": evaluation["test_nats"],
        "test_bits_per_dim": evaluation["test_bits_per_dim"],
        "test_images": evaluation["test"]["images"],
        "steps": metrics["steps"],
        "best_step": metrics.get("best_step"),
        "train_seconds": round(metrics["ms_per_iter"] * metrics["steps_this_run"] / 1000),
        "seconds": round(seconds),  # with the periodic evaluations and the test set's
        "budget_minutes": minutes,
        "device": metrics.get("device", "cpu"),
        "precision": metrics["precision"],
        "threads": torch.get_num_threads(),
        "cpu": describe_cpu(),
        "parameters": metrics["parameters"],
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "run": str(work / name),
    }


def time_sampling(run_dir: Path, n: int) -> dict:
    """Seconds per image of sampling ``n`` images on the model's caches and by recomputing the whole image for every
    pixel (one run each, after a one-image warm-up of the cached route), and whether both drew the same pixels."""
    model, _ = load_image_model(run_dir)
    sample_images(model, 1, seed=0)
    start = time.perf_counter()
    cached = sample_images(model, n, seed=0)
    cached_s = (time.perf_counter() - start) / n
    start = time.perf_counter()
    recomputed = sample_images(model, n, seed=0, cached=False)
    recomputed_s = (time.perf_counter() - start) / n
    return {"cached_s": cached_s, "recomputed_s": recomputed_s, "same": torch.equal(cached, recomputed), "images": n,
            "threads": torch.get_num_threads(), "cpu": describe_cpu(),
            "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"}  # fmt: skip


def report(entries: dict[str, dict]) -> Report:
    """The table of every measured model against its paper's figure, and the issue's orderings between them."""
    report = Report("Image models on binarized MNIST (test nats per image)", "python benchmarks/images.py --mnist DIR")
    report.precision = "as each row says"
    report.references = "the references being the papers' published figures, or a target, and the orderings' rows "
    report.references += "comparing two of our runs"
    for name in MODELS:
        if name not in entries:
            continue
        e, (paper, source) = entries[name], PAPERS[name]
        budget = f"{e['budget_minutes']:g} min budget, " if e["budget_minutes"] else ""
        best = f" (kept step {e['best_step']})" if e.get("best_step") else ""
        setting = (f"configs/mnist-{name}.toml, {budget}{e['steps']} steps{best}, {e['train_seconds']} s training "
                   f"({e['seconds']} s with evaluation), {e['device']} "
                   f"({e['threads']} threads{', ' + e['cpu'] if 'cpu' in e else ''}), {e['precision']}, "
                   f"{e['date']}")  # fmt: skip
        report.rows.append(Row(name, setting, "test nats", e["test_nats"], paper, source, "<= 1", unit="nats"))
    if "gated" in entries and "pixelcnn" in entries:
        report.rows.append(Row("Gated vs plain PixelCNN", "the two rows above", "test nats",
                               entries["gated"]["test_nats"], entries["pixelcnn"]["test_nats"], "PixelCNN", "<= 1",
                               unit="nats"))  # fmt: skip
    others = [n for n in ("pixelcnn", "gated", "transformer") if n in entries]
    if "pixelsnail" in entries and others:
        best = min(others, key=lambda n: entries[n]["test_nats"])
        report.rows.append(Row("PixelSNAIL vs the best of the others", f"best other: {best}", "test nats",
                               entries["pixelsnail"]["test_nats"], entries[best]["test_nats"], best, "<= 1",
                               unit="nats"))  # fmt: skip
    for name in SAMPLED:
        if f"{name} sampling" in entries:
            e = entries[f"{name} sampling"]
            report.rows.append(Row(f"{name} sampling on caches", f"{e['images']} images of 28x28, one run each, "
                                   f"{e['threads']} threads{', ' + e['cpu'] if 'cpu' in e else ''}, {e['date']}; "
                                   f"same pixels as recomputation: {e['same']}",
                                   "time per image", e["cached_s"], e["recomputed_s"], "recomputing every pixel",
                                   ">= 3", speedup=True))  # fmt: skip
    report.notes.append(
        "Binarized MNIST: images 0-49,999 of the training file train, 50,000-59,999 validate, t10k tests; every pixel "
        "drawn once as Bernoulli(level/255) from data.seed = 0 (qkv.data.mnist). Test nats: the exact log-likelihood "
        "of all 10,000 test images from the model's own factorisation (MADE's ensemble: log of the mean of the "
        "members' joint probabilities)."
    )
    report.notes.append(
        "Each row is one training run, measured when its date says, on the CPU it names (the header names the machine "
        "that last wrote the table); the MADE rows keep the weights of their lowest "
        "validation loss (train.keep_best). Ratios below 1 beat the reference."
    )
    return report


def _record(key: str, entry: dict) -> dict[str, dict]:
    """Merge one entry into the results file (read again just before: another run may have added its own) and
    replace it atomically; all entries."""
    entries = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    entries[key] = entry
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    tmp = TABLE.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(TABLE)
    return entries


def run(data: Path, models: list[str], minutes: float | None, samples: int, steps: int | None = None) -> None:
    """Measure ``models`` one after another, merging each into the results and rewriting the table."""
    work = scratch_directory("qkv-mnist-")  # (its checkpoints: removed when the run ends)
    for name in models:
        entry = measure(name, data, minutes, work, steps)
        print(f"{name}: {entry['test_nats']:.2f} nats per test image, {entry['train_seconds']} s training", flush=True)
        _record(name, entry)
        if name in SAMPLED and samples:
            timing = time_sampling(work / name, min(samples, 2))
            print(f"{name} sampling: cached {timing['cached_s']:.2f} s per image, recomputed "
                  f"{timing['recomputed_s']:.2f} s", flush=True)  # fmt: skip
            _record(f"{name} sampling", timing)
        if samples:  # each sample beside its nearest training image, with the distance
            grid = ROOT / "docs" / f"mnist-samples-{name}.png"
            qkv_main(["sample", str(work / name), "--n", str(samples), "--seed", "0", "--png", str(grid)])
        table = report(json.loads(TABLE.read_text()))  # (after every model: a long run's table is never stale)
        table.write(RESULTS / "images-mnist.md")
    print(table.markdown())
    print(f"written to {RESULTS / 'images-mnist.md'}")
