"""KV-cache speed-up: 500 new tokens at batch 1, greedy, with the cache vs recomputing the whole prefix each step.

    python benchmarks/generate.py        # writes benchmarks/results/generate.md

Two model shapes, each with a 1024-token context so that 500 new tokens fit in the cache: the baby GPT's (where a
step is so small that fixed per-step costs dominate) and a GPT-2-small-like one. Both runs must give the same tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import qkv
from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.models import GPT, GPTConfig

RESULTS = Path(__file__).parent / "results"


SHAPES = {  # name -> (layers, embed_dim, heads, vocab)
    "baby GPT shape (4 layers, 128 dim)": (4, 128, 4, 80),
    "GPT-2-small-like (6 layers, 384 dim)": (6, 384, 6, 8192),
}


def measure(layers: int, dim: int, heads: int, vocab: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, max_seq_len=1024, num_layers=layers, num_heads=heads, embed_dim=dim)
    model = GPT(config).eval()
    prompt = torch.randint(0, vocab, (1, 16))
    outputs = {}

    def run(use_cache: bool) -> None:
        outputs[use_cache] = qkv.generate(model, prompt, max_new_tokens=new_tokens, use_cache=use_cache)

    cached, uncached = time_pair(lambda: run(True), lambda: run(False), repeats)
    assert torch.equal(outputs[True], outputs[False]), "cache and no-cache decoding disagree"
    return cached, uncached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=500, help="tokens generated per run (500)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs (3)")
    args = parser.parse_args()
    new_tokens, repeats = args.new_tokens, args.repeats
    report = Report("KV-cache generation speed-up", "python benchmarks/generate.py")
    for name, shape in SHAPES.items():
        cached, uncached = measure(*shape, new_tokens, repeats)
        report.rows.append(
            Row(
                "KV cache",
                f"{name}, batch 1, {new_tokens} new tokens",
                "speed-up",
                cached,
                uncached,
                "no cache",
                ">= 5",
                speedup=True,
            )
        )
        report.notes.append(
            f"{name}: {new_tokens / cached:,.0f} tokens/s with the cache, "
            f"{new_tokens / uncached:,.0f} without; identical tokens."
        )
    report.notes.append(
        f"Greedy, 16-token prompt, random weights (speed does not depend on them), context 1024; "
        f"medians of {repeats} alternating runs after a warm-up."
    )
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'generate.md')}")


if __name__ == "__main__":
    main()
