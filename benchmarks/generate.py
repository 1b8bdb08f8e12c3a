"""KV-cache speed-up: 500 new tokens at batch 1, greedy, with the cache vs recomputing the whole prefix each step.

    python benchmarks/generate.py        # writes benchmarks/results/generate.md

The model is the baby GPT's shape (4 layers, 4 heads, 128 dim) with a 1024-token context so that 500 new tokens fit
in the cache; weights are random (speed does not depend on them) and both runs must produce the same tokens.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import qkv
from qkv.benchmarking.report import Report, Row
from qkv.models import GPT, GPTConfig

RESULTS = Path(__file__).parent / "results"


def main(new_tokens: int = 500, repeats: int = 3) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=80, max_seq_len=1024, num_layers=4, num_heads=4, embed_dim=128)).eval()
    prompt = torch.randint(0, 80, (1, 16))
    timings = {True: [], False: []}
    outputs = {}
    for _ in range(repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = qkv.generate(model, prompt, new_tokens, use_cache=use_cache)
            timings[use_cache].append(time.perf_counter() - start)
    assert torch.equal(outputs[True], outputs[False]), "cache and no-cache decoding disagree"
    cached, uncached = min(timings[True]), min(timings[False])
    report = Report("KV-cache generation speed-up", "python benchmarks/generate.py")
    report.rows.append(
        Row(
            "KV cache",
            f"batch 1, {new_tokens} new tokens, greedy",
            "speed-up",
            cached,
            uncached,
            "no cache",
            ">= 5",
            speedup=True,
        )
    )
    report.notes.append(
        f"{new_tokens / cached:,.0f} tokens/s with the cache, {new_tokens / uncached:,.0f} without; "
        f"identical tokens; best of {repeats}."
    )
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'generate.md')}")


if __name__ == "__main__":
    main()
