"""What unused hook points cost: a plain forward pass and a decoding run, with hook points (this tree) against the
commit before they were added, measured in the same run; and, in one process, the hook points as they are against
the same model with every hook point's call replaced by a bare identity function (their own cost, isolated from the
other changes between the two commits).

    python benchmarks/hooks.py                  # writes benchmarks/results/hooks.md (about 3 minutes on 2 cores)
    python benchmarks/hooks.py --baseline REV   # another baseline commit

The baseline is checked out into a temporary git worktree; each measurement runs in a fresh process (one per tree,
alternating, several rounds) so both trees see the same machine load, and the medians are compared. Target: within
2% (a ratio <= 1.02). Nothing listens to the hook points here: this is the price every user pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from qkv.benchmarking.report import Report, Row

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
BASELINE = "c897e27"  # the last commit without hook points

# Runs in a child process with the tree under test first on sys.path; prints {"forward": s, "decode": s}.
CHILD = r"""
import inspect, json, statistics, sys, time
import torch
import qkv
from qkv.models import GPT, GPTConfig

torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[1]))
repeats = int(sys.argv[2])


def median_time(fn):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


big = GPT(GPTConfig(vocab_size=8192, max_seq_len=256, num_layers=6, num_heads=6, embed_dim=384)).eval()
ids = torch.randint(0, 8192, (4, 256))
small = GPT(GPTConfig(vocab_size=80, max_seq_len=256, num_layers=4, num_heads=4, embed_dim=128)).eval()
new_api = "config" in inspect.signature(qkv.generate).parameters


def decode(model, vocab):
    prompt = torch.randint(0, vocab, (1, 16))
    if new_api:
        return lambda: qkv.generate(model, prompt, max_new_tokens=128)
    return lambda: qkv.generate(model, prompt, 128)


with torch.no_grad():
    forward = median_time(lambda: big(ids))
    decode_small = median_time(decode(small, 80))
    decode_big = median_time(decode(big, 8192))
print(json.dumps({"forward": forward, "decode": decode_small, "decode_big": decode_big}))
"""


def isolated(report: Report, repeats: int) -> None:
    """This tree's hook points as they are vs a bare ``lambda self, x: x`` in their place, alternating in one
    process: what the hook points themselves cost, nothing else."""
    import torch

    import qkv
    from qkv.attention.hooks import HookPoint
    from qkv.benchmarking.measure import time_pair
    from qkv.models import GPT, GPTConfig

    torch.manual_seed(0)
    cases = {
        "4 layers, 128 dim": GPT(GPTConfig(vocab_size=80, max_seq_len=256, num_layers=4, num_heads=4, embed_dim=128)),
        "6 layers, 384 dim, 8k vocab": GPT(GPTConfig(vocab_size=8192, max_seq_len=256, num_layers=6, num_heads=6,
                                                     embed_dim=384)),
    }  # fmt: skip
    real_call = HookPoint.__call__

    def with_identity(fn):
        def run():
            HookPoint.__call__ = lambda self, x: x  # type: ignore[method-assign]
            try:
                fn()
            finally:
                HookPoint.__call__ = real_call  # type: ignore[method-assign]

        return run

    for name, model in cases.items():
        model.eval()
        prompt = torch.randint(0, model.config.vocab_size, (1, 16))
        with torch.no_grad():
            decode = lambda m=model, p=prompt: qkv.generate(m, p, max_new_tokens=128)
            ours, bare = time_pair(decode, with_identity(decode), repeats)
        report.rows.append(
            Row(
                "Hook points alone (one process)",
                f"greedy decoding, {name}, 16 + 128 tokens",
                "time",
                ours,
                bare,
                "hook points as bare identities",
                "<= 1.02",
            )  # fmt: skip
        )


def measure(src: Path, threads: int, repeats: int) -> dict[str, float]:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(repeats)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit without hook points ({BASELINE})")
    parser.add_argument("--rounds", type=int, default=6, help="alternating process pairs (6)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per process (7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline], check=True,
                       capture_output=True)  # fmt: skip
        try:
            ours: dict[str, list[float]] = {"forward": [], "decode": [], "decode_big": []}
            theirs: dict[str, list[float]] = {"forward": [], "decode": [], "decode_big": []}
            for _ in range(args.rounds):
                for src, store in ((ROOT / "src", ours), (tree / "src", theirs)):
                    for key, value in measure(src, args.threads, args.repeats).items():
                        store[key].append(value)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    report = Report(
        "Unused hook points: forward and decoding against the commit before them", "python benchmarks/hooks.py"
    )
    settings = {
        "forward": ("Plain forward", "GPT 6 layers, 384 dim, batch 4 x 256 tokens, fp32, no_grad"),
        "decode": ("Greedy decoding", "GPT 4 layers, 128 dim, batch 1, 16 + 128 tokens on the KV cache"),
        "decode_big": ("Greedy decoding", "GPT 6 layers, 384 dim, 8k vocab, batch 1, 16 + 128 tokens on the KV cache"),
    }
    for key, (experiment, setting) in settings.items():
        report.rows.append(
            Row(
                experiment,
                setting,
                "time",
                statistics.median(ours[key]),
                statistics.median(theirs[key]),
                f"commit {args.baseline} (no hook points)",
                "<= 1.02",
            )  # fmt: skip
        )
    isolated(report, 3 * args.repeats)
    report.notes.append(
        f"Medians of {args.rounds} alternating process pairs, each the median of {args.repeats} timed runs after a "
        f"warm-up, {args.threads} threads. Per-round ratios, forward: "
        + ", ".join(f"{a / b:.3f}" for a, b in zip(ours["forward"], theirs["forward"]))
        + "; decoding (4 layers, 128 dim): "
        + ", ".join(f"{a / b:.3f}" for a, b in zip(ours["decode"], theirs["decode"]))
        + "; decoding (6 layers, 384 dim): "
        + ", ".join(f"{a / b:.3f}" for a, b in zip(ours["decode_big"], theirs["decode_big"]))
        + "."
    )
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'hooks.md')}")


if __name__ == "__main__":
    main()
