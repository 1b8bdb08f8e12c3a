"""P4: nanoGPT's CPU "baby" configuration, qkv against nanoGPT itself (its own train.py and model.py, unmodified).

    python benchmarks/train.py --nanogpt DIR     # DIR: a checkout of github.com/karpathy/nanoGPT (MIT); ~40 min

Both train on ../shared/data/tinyshakespeare.txt with the configuration nanoGPT's README gives for CPUs (4 layers,
4 heads, 128 wide, context 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4, no dropout; configs/gpt-baby.toml).

* speed: nanoGPT and qkv run alternately, ``--rounds`` times each, as separate processes of ``--speed-iters``
  iterations; ms/iter is the median over all iterations after the first 20 of each process (nanoGPT's own per-
  iteration ``time`` lines, qkv's per-step ``ms`` in log.jsonl). nanoGPT is timed with and without its
  ``--compile=True``; the faster is the reference. qkv is timed in fp32 and in bf16 autocast.
* quality: ``--seeds`` seeds of 2000 iterations each for nanoGPT (fp32, its only CPU precision) and qkv in each of
  ``--precisions`` (fp32, and bf16 where the CPU has native bf16 units); the loss is the mean over the *whole*
  validation split (every non-overlapping 64-character window), each model with its own tokenizer over the same
  text: the last 10%, from the first document end on (where qkv's split starts; nanoGPT's starts a few characters
  earlier, so neither model trained on any of it). Both get the same seed values, ``1337 + seed`` (nanoGPT's own
  1337, offset from outside through runpy: its code is not edited). The table gives the mean difference with a 95%
  Welch interval (the two implementations draw different random numbers from a seed, so runs are independent
  samples, not pairs) and every seed's losses.

nanoGPT's data preparation script is run as it is, with the text already in place (it downloads only if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy import stats  # (scikit-learn's dependency)

from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.data.sources import find_validation_start, list_sources
from qkv.devices import native_cpu_bf16
from qkv.runs import load_causal_lm

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "gpt-baby.toml"
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS = Path(__file__).parent / "results"
CONTEXT = 64
BABY = [  # nanoGPT's README, "I only have a macbook": the CPU baby run
    "config/train_shakespeare_char.py", "--device=cpu", "--eval_iters=20", "--log_interval=1", "--block_size=64",
    "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--lr_decay_iters=2000", "--dropout=0.0",
]  # fmt: skip

# runs nanoGPT's train.py unmodified, with torch.manual_seed(s) offset by SEED_OFFSET (its seed is not a setting)
NANO_RUNNER = """
import os, runpy, sys, torch
offset, manual_seed = int(os.environ["SEED_OFFSET"]), torch.manual_seed
torch.manual_seed = lambda s: manual_seed(s + offset)
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, os.getcwd())  # nanoGPT's directory: train.py imports model.py and reads configurator.py
runpy.run_path("train.py", run_name="__main__")
"""


def prepare_nanogpt(nanogpt: Path, work: Path) -> None:
    """nanoGPT's shakespeare_char data: its prepare.py on our copy of the text (no download: the file is there)."""
    data = nanogpt / "data" / "shakespeare_char"
    if (data / "train.bin").exists():
        return
    shutil.copy(TEXT, data / "input.txt")
    stub = work / "stub"  # prepare.py imports requests for the download it will not make
    stub.mkdir(exist_ok=True)
    (stub / "requests.py").write_text("def get(*a, **k):\n    raise RuntimeError('no network in benchmarks')\n")
    env = {**os.environ, "PYTHONPATH": str(stub)}
    subprocess.run([sys.executable, "prepare.py"], cwd=data, env=env, check=True, capture_output=True)


def run_nanogpt(nanogpt: Path, out: Path, iters: int, seed: int, compile_: bool, threads: int) -> list[float]:
    """Train nanoGPT; returns its per-iteration times (ms) and leaves out/ckpt.pt."""
    runner = out.parent / "nano_runner.py"
    runner.write_text(NANO_RUNNER)
    args = [*BABY, f"--max_iters={iters}", f"--eval_interval={iters}", f"--out_dir={out}", f"--compile={compile_}"]
    env = {**os.environ, "SEED_OFFSET": str(seed), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, str(runner), *args, "--always_save_checkpoint=True"],
        cwd=nanogpt,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"nanoGPT failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.M)]


def run_qkv(out: Path, iters: int, seed: int, precision: str, threads: int) -> list[float]:
    """Train qkv with the same configuration; returns its per-step times (ms)."""
    sets = [
        f"data.path={TEXT}",
        f"train.steps={iters}",
        f"train.seed={seed}",
        f"train.precision='{precision}'",
        f"train.eval_interval={iters}",
        f"train.checkpoint_interval={iters}",
    ]
    args = [sys.executable, "-m", "qkv.cli", "train", str(CONFIG), "--out", str(out), "--no-progress", "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([*args, *[a for s in sets for a in ("--set", s)]], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"qkv failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return [json.loads(line)["ms"] for line in (out / "log.jsonl").read_text().splitlines()]


def steady(times: list[float], skip: int = 20) -> list[float]:
    return times[skip:]


@torch.no_grad()
def validation_start() -> tuple[int, int]:
    """Where nanoGPT's validation split starts (90% of the characters) and where qkv's does (the first document end
    after that): both models are scored from the later one, text neither trained on."""
    size = TEXT.stat().st_size  # (the file is ASCII: bytes are characters)
    return int(size * 0.9), find_validation_start(list_sources(TEXT), int(size * 0.9))[1]


def full_validation_loss(kind: str, path: Path, nanogpt: Path) -> float:
    """Mean cross-entropy over every non-overlapping 64-token window of the validation text both splits hold."""
    nano_start, start = validation_start()
    if kind == "nanogpt":
        sys.path.insert(0, str(nanogpt))
        from model import GPT, GPTConfig  # nanoGPT's model.py

        checkpoint = torch.load(path / "ckpt.pt", map_location="cpu", weights_only=False)
        model = GPT(GPTConfig(**checkpoint["model_args"]))
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
        import numpy as np

        val = np.fromfile(nanogpt / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
        ids = torch.from_numpy(val.astype(np.int64))[start - nano_start :]

        def logits(x: torch.Tensor) -> torch.Tensor:
            return model(x, x)[0]  # with targets, nanoGPT returns logits for every position
    else:
        model, tokenizer, _ = load_causal_lm(path, "cpu")
        text_ids = torch.tensor(tokenizer.encode(TEXT.read_text(encoding="utf-8")))
        ids = text_ids[start:]

        def logits(x: torch.Tensor) -> torch.Tensor:
            return model(x).logits

    model.eval()
    windows = (len(ids) - 1) // CONTEXT
    x = ids[: windows * CONTEXT].view(windows, CONTEXT)
    y = ids[1 : windows * CONTEXT + 1].view(windows, CONTEXT)
    total = 0.0
    for xb, yb in zip(x.split(64), y.split(64)):
        total += F.cross_entropy(logits(xb).float().flatten(0, 1), yb.flatten(), reduction="sum").item()
    return total / y.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--seeds", type=int, default=3, help="quality runs per implementation (0: speed only)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--speed-iters", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    native = "fp32,bf16" if native_cpu_bf16() else "fp32"
    parser.add_argument("--precisions", default=native,
                        help="qkv's precisions (default: fp32, and bf16 where the CPU has native bf16)")  # fmt: skip
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    if not (args.nanogpt / "train.py").is_file() or not (args.nanogpt / "model.py").is_file():
        sys.exit(f"{args.nanogpt} is not a nanoGPT checkout (train.py and model.py are missing)")
    work = scratch_directory("qkv-p4-")
    prepare_nanogpt(args.nanogpt, work)
    command = f"python benchmarks/train.py --nanogpt NANOGPT --seeds {args.seeds} --steps {args.steps}"
    results = RESULTS / ("train.md" if args.seeds else "train-speed.md")
    command += f" --rounds {args.rounds}" if args.rounds != 3 else ""
    report = Report(
        "P4: nanoGPT's baby configuration, qkv vs nanoGPT itself", command, precision=" and ".join(precisions)
    )
    if args.rounds:  # --rounds 0: quality only
        speed(args, work, report, precisions)
    if args.seeds:  # --seeds 0: speed only
        quality(args, work, report, precisions)
    print(report.markdown())
    print(f"written to {report.write(results)}")
    shutil.rmtree(work, ignore_errors=True)


def speed(args: argparse.Namespace, work: Path, report: Report, precisions: list[str]) -> None:
    """ms/iter of nanoGPT (with and without --compile) and qkv in each precision, in alternating processes."""
    times: dict[str, list[float]] = {"nano": [], "nano-compile": [], **{p: [] for p in precisions}}
    for r in range(args.rounds):
        for name in times:
            out = work / f"speed-{name}-{r}"
            if name.startswith("nano"):
                ms = run_nanogpt(args.nanogpt, out, args.speed_iters, 0, name == "nano-compile", args.threads)
            else:
                ms = run_qkv(out, args.speed_iters, 1337, name, args.threads)
            times[name] += steady(ms)
    median = {name: statistics.median(t) for name, t in times.items() if t}
    best_nano = min(("nano", "nano-compile"), key=lambda n: median.get(n, float("inf")))
    target = "<= 0.6" if torch.cpu._is_avx512_bf16_supported() else "<= 0.85"  # native bf16 or not
    for precision in precisions:
        report.rows.append(
            Row(
                f"P4 speed, qkv {precision}",
                f"baby config, {args.threads} threads",
                "ms/iter",
                median[precision] / 1e3,
                median[best_nano] / 1e3,
                f"nanoGPT{' --compile' if best_nano == 'nano-compile' else ''}",
                target,
            )
        )
    report.notes.append(
        "P4 speed: medians of per-iteration times after 20 warm-up iterations, "
        f"{args.rounds} alternating processes of {args.speed_iters} iterations each; nanoGPT "
        + ", ".join(f"{n} {median[n]:.1f} ms" for n in ("nano", "nano-compile") if n in median)
        + " (the faster is the reference)."
    )


def quality(args: argparse.Namespace, work: Path, report: Report, precisions: list[str]) -> None:
    """Full validation loss of ``args.seeds`` runs per implementation; the mean difference with its 95% interval."""
    losses: dict[str, list[float]] = {"nano": [], **{p: [] for p in precisions}}
    for seed in range(1, args.seeds + 1):
        nano_out = work / f"nano-{seed}"
        run_nanogpt(args.nanogpt, nano_out, args.steps, seed, False, args.threads)
        losses["nano"].append(full_validation_loss("nanogpt", nano_out, args.nanogpt))
        for precision in precisions:
            out = work / f"qkv-{precision}-{seed}"
            run_qkv(out, args.steps, 1337 + seed, precision, args.threads)
            losses[precision].append(full_validation_loss("qkv", out, args.nanogpt))
        print(f"seed {1337 + seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in losses.items()), flush=True)
    mean = {k: statistics.mean(v) for k, v in losses.items()}
    for precision in precisions:
        low, high = welch_interval(losses[precision], losses["nano"])
        setting = f"tinyshakespeare, {args.steps} it, {args.seeds} seeds"
        report.rows.append(Row(f"P4 quality, qkv {precision}", setting, "full val loss", mean[precision],
                               mean["nano"], "nanoGPT fp32", "", unit="nats"))  # fmt: skip
        delta = mean[precision] - mean["nano"]
        report.notes.append(f"P4 quality {precision}: qkv - nanoGPT = {delta:+.4f} nats, 95% interval [{low:+.4f}, "
                            f"{high:+.4f}] (goal: mean <= +0.003 with the interval reaching 0).")  # fmt: skip
    header = "| seed | nanoGPT | " + " | ".join(f"qkv {p}" for p in precisions) + " |"
    lines = [header, "|---:|---:|" + "---:|" * len(precisions)]
    for i in range(args.seeds):
        lines.append(f"| {1337 + i + 1} | {losses['nano'][i]:.4f} | "
                     + " | ".join(f"{losses[p][i]:.4f}" for p in precisions) + " |")  # fmt: skip
    report.notes.append("Full validation loss per seed:\n\n" + "\n".join(lines))


def welch_interval(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The ``confidence`` interval of mean(a) - mean(b) for independent samples of unequal variance (Welch)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * (va + vb) ** 0.5
    delta = statistics.mean(a) - statistics.mean(b)
    return delta - half, delta + half


if __name__ == "__main__":
    main()
