"""P7: corpora larger than memory: ``qkv prepare`` throughput and memory, and training from its shards.

    python benchmarks/data.py            # writes benchmarks/results/data.md (about 8 minutes on 2 cores)
    python benchmarks/data.py --mb 64    # a quick look

The corpus is the bundled plays repeated to ``--mb`` megabytes (1,024 by default: the issue's 1 GB), in a
temporary directory. Every qkv figure is a separate process (``qkv prepare`` / ``qkv train``), timed by wall clock,
its peak RSS read from the kernel (``VmHWM``). The references, measured in the same run:

* char: nanoGPT's ``data/shakespeare_char/prepare.py`` method (the whole text in memory, ``[stoi[c] for c in data]``,
  ``np.array(..., dtype=np.uint16).tofile``) on a 64 MB slice (it holds ~10 bytes per character, so no more);
* BPE-8k: HuggingFace ``tokenizers``' own ``encode_batch_fast`` of the same tokenizer over the slice's documents,
  in process: the library qkv calls, without reading, splitting or writing;
* training: the same ``qkv train`` on the bundled corpus (1 MB), for peak RSS and the time to the first step;
* loss: ``qkv train`` from the bundled text file against ``qkv train`` from that text prepared by ``qkv prepare``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qkv.benchmarking.report import Report, Row
from qkv.data.text import CORPUS_PATH
from qkv.tokenizers import load_tokenizer_file

RESULTS = Path(__file__).parent / "results"
GIB = 1 << 30
# runs the qkv CLI and reports the process's peak RSS on its last stderr line: VmHWM (kilobytes), the high-water
# mark of this process's own memory (ru_maxrss would also count the parent's memory at the fork before exec)
# (and, for a training, the seconds from its start to the end of the first optimizer step)
RUNNER = (
    "import re, sys, time\nstart = time.perf_counter()\nfrom qkv.training.trainer import Trainer\n"
    "step = Trainer._train_step\n"
    "def first(self):\n"
    "    loss = step(self)\n"
    "    if self.step == 0: print('first_step', time.perf_counter() - start, file=sys.stderr)\n"
    "    return loss\n"
    "Trainer._train_step = first\n"
    "from qkv.cli import main\ncode = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print('maxrss', hwm, file=sys.stderr)\nsys.exit(code)\n"
)


def qkv(*args: str) -> tuple[float, int, str]:
    """Run ``qkv ARGS`` in a fresh process: ``(seconds, peak RSS in bytes, stdout)``; for a training, the seconds
    are those to the end of its first step."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"qkv {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    rss = int(done.stderr.strip().splitlines()[-1].split()[1]) * 1024
    first_step = re.search(r"^first_step (\S+)$", done.stderr, re.M)
    return float(first_step.group(1)) if first_step else seconds, rss, done.stdout


def make_corpus(path: Path, megabytes: int) -> int:
    """The bundled plays repeated to ``megabytes`` (whole copies, the last one cut at a blank line)."""
    text = CORPUS_PATH.read_bytes()
    want = megabytes << 20
    with open(path, "wb") as out:
        written = 0
        while written < want:
            piece = text if written + len(text) <= want else text[: text.rfind(b"\n\n", 0, want - written) + 2]
            out.write(piece)
            written += len(piece)
    return written


def nanogpt_char_rate(path: Path, limit: int) -> float:
    """nanoGPT's shakespeare_char preparation, timed on the first ``limit`` bytes: MB/s."""
    with open(path, encoding="utf-8") as f:
        data = f.read(limit)
    t0 = time.perf_counter()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_ids, val_ids = [stoi[c] for c in data[: int(n * 0.9)]], [stoi[c] for c in data[int(n * 0.9) :]]
    with tempfile.TemporaryDirectory() as tmp:
        np.array(train_ids, dtype=np.uint16).tofile(Path(tmp) / "train.bin")
        np.array(val_ids, dtype=np.uint16).tofile(Path(tmp) / "val.bin")
    return len(data.encode()) / 1e6 / (time.perf_counter() - t0)


def hf_bpe_rate(path: Path, tokenizer_file: Path, limit: int) -> float:
    """HuggingFace tokenizers' ``encode_batch_fast`` over the documents of the first ``limit`` bytes: MB/s."""
    tokenizer = load_tokenizer_file(tokenizer_file).tokenizer  # type: ignore[attr-defined]
    with open(path, encoding="utf-8") as f:
        documents = f.read(limit).split("\n\n")
    t0 = time.perf_counter()
    tokenizer.encode_batch_fast(documents, add_special_tokens=False)
    return limit / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="corpus size in megabytes (1024)")
    parser.add_argument("--slice-mb", type=int, default=64, help="the references' slice (64)")
    args = parser.parse_args()
    command = "python benchmarks/data.py" + (f" --mb {args.mb}" if args.mb != 1024 else "")
    report = Report("P7: corpora larger than memory (qkv prepare, training from shards)", command)
    with tempfile.TemporaryDirectory(prefix="qkv-bench-data-") as tmp:
        work = Path(tmp)
        size = make_corpus(work / "corpus.txt", args.mb)
        setting = f"{size / 1e6:,.0f} MB of text"
        slice_bytes = min(size, args.slice_mb << 20)
        print(f"corpus: {setting}; preparing it (char, then BPE-8k) ...", flush=True)

        seconds, rss_char, _ = qkv("prepare", str(work / "corpus.txt"), "--out", str(work / "char"), "--no-progress")
        char_rate = size / 1e6 / seconds
        nano = nanogpt_char_rate(work / "corpus.txt", slice_bytes)
        report.rows += [
            Row("prepare, char", setting, "MB/s", char_rate, nano, f"nanoGPT's prepare.py method, {args.slice_mb} MB",
                "", unit="MB/s", speedup=False),
            Row("prepare, char", setting, "MB/s", char_rate, 50.0, "the issue's floor", ">= 1", unit="MB/s"),
            Row("prepare, char", setting, "peak RSS", rss_char, GIB, "the issue's ceiling, 1 GiB", "<= 1", unit="MiB"),
        ]  # fmt: skip

        seconds, rss_bpe, _ = qkv("prepare", str(work / "corpus.txt"), "--out", str(work / "bpe"), "--tokenizer",
                                  "bpe:8192", "--no-progress")  # fmt: skip
        bpe_rate = size / 1e6 / seconds
        hf = hf_bpe_rate(work / "corpus.txt", work / "bpe" / "tokenizer.json", slice_bytes)
        report.rows += [
            Row("prepare, BPE-8k", setting, "MB/s", bpe_rate, hf, f"HF encode_batch_fast alone, {args.slice_mb} MB",
                ">= 1", unit="MB/s"),
            Row("prepare, BPE-8k", setting, "MB/s", bpe_rate, 10.0, "the issue's floor", ">= 1", unit="MB/s"),
            Row("prepare, BPE-8k", setting, "peak RSS", rss_bpe, GIB, "the issue's ceiling, 1 GiB", "<= 1", unit="MiB"),
        ]  # fmt: skip

        print("training from the shards and from the bundled corpus ...", flush=True)
        train = ["train", "gpt-baby", "--no-progress", "--set", "train.eval_iters=1", "--set", "train.steps="]
        t_big, rss_big, _ = qkv(*train[:-1], train[-1] + "1", "--set", f"data.path={work / 'char'}",
                                "--out", str(work / "run-big"))  # fmt: skip
        t_small, rss_small, _ = qkv(*train[:-1], train[-1] + "1", "--out", str(work / "run-small"))
        report.rows += [
            Row("train from shards", setting, "peak RSS", rss_big, rss_small, "the bundled 1 MB corpus", "<= 1.1",
                unit="MiB"),
            Row("train from shards", setting, "to the first step", t_big, t_small, "the bundled 1 MB corpus", "",
                unit="s"),
            Row("train from shards", setting, "to the first step", t_big, 5.0, "the issue's 5 s", "<= 1", unit="s"),
        ]  # fmt: skip

        qkv("prepare", str(CORPUS_PATH), "--out", str(work / "plays"), "--no-progress")
        losses = {}
        for name, data in (("shards", str(work / "plays")), ("text", str(CORPUS_PATH))):
            _, _, out = qkv(*train[:-1], train[-1] + "20", "--set", f"data.path={data}", "--out", str(work / name))
            history = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines()]
            losses[name] = [row["loss"] for row in history]
        report.rows.append(
            Row("train from shards", "the bundled corpus, 20 steps", "last train loss", losses["shards"][-1],
                losses["text"][-1], "the same text file as data.path", "<= 1", unit="nats")
        )  # fmt: skip
        same = losses["shards"] == losses["text"]
        report.notes.append(
            f"Training from the prepared bundled corpus and from its text file: the 20 per-step losses are "
            f"{'identical' if same else 'DIFFERENT'} (same seed, same batches)."
        )
    report.notes.append(
        "Peak RSS is the process's own high-water mark (VmHWM), PyTorch's ~300-400 MiB included; training reads "
        "shards a window at a time through the file, so the pages it reads stay in the OS cache, not in the process. "
        "'To the first step': from the process's start (Python already running) to the end of the first optimizer "
        "step: imports, the shards' SHA-256 checked, the model built, one step."
    )
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'data.md')}")


if __name__ == "__main__":
    main()
