"""P4: training the nanoGPT "baby" configuration (configs/gpt-baby.toml), qkv vs nanoGPT, side by side.

    python benchmarks/train.py            # about 8 minutes on 2 cores; writes benchmarks/results/train.md

* speed: qkv's Trainer and the nanoGPT reference (benchmarks/nanogpt_reference.py) train the same configuration in
  one process, in alternating blocks of steps after a warm-up, on the same batches; ms/iter is the median block.
* quality: qkv trains 2000 steps on the bundled corpus (the target) and on nanoGPT's tinyshakespeare; the reference
  trains 2000 steps on tinyshakespeare too; both are evaluated on the same fixed validation batches.
* MFU: model FLOPs per second (nanoGPT's estimate: 6N + 12·L·H·Q·T per token) over this machine's fp32 matmul
  GFLOP/s, measured here on a 2048² matmul.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from nanogpt_reference import NanoGPT, NanoTrainer  # noqa: E402

from qkv.benchmarking.report import Report, Row  # noqa: E402
from qkv.training import Trainer, load_run_config  # noqa: E402
from qkv.training.lm import build_lm  # noqa: E402

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "gpt-baby.toml"
TINY_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS = Path(__file__).parent / "results"


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def model_flops_per_iter(config, params: int) -> float:
    m, t = config.model, config.train
    head_dim = m.embed_dim // m.num_heads
    per_token = 6 * params + 12 * m.num_layers * m.num_heads * head_dim * m.max_seq_len
    return per_token * m.max_seq_len * t.batch_size


def make_qkv(overrides: list[str]):
    config = load_run_config(CONFIG, overrides)
    model, task, tok = build_lm(config)
    return config, Trainer(
        model, task, config.train, Path("/tmp/qkv-bench-train"), tok, config.to_dict(), progress=False
    )


def make_reference(config, seed: int):
    torch.manual_seed(seed)
    m = config.model
    model = NanoGPT(m.vocab_size, m.max_seq_len, m.num_layers, m.num_heads, m.embed_dim, bias=m.bias)
    return NanoTrainer(model, config.train.lr, config.train.min_lr, config.train.warmup_steps, config.train.steps)


def interleaved_speed(blocks: int = 10, block_steps: int = 25, warmup: int = 300) -> tuple[float, float]:
    """Median ms/iter of qkv and the reference, alternating blocks in one process on the same batches."""
    config, ours = make_qkv(["train.steps=100000"])
    ref = make_reference(config, config.train.seed)
    ref.steps = 100000
    task, c = ours.task, config.train

    def run_ours(start: int, n: int) -> float:
        torch.set_flush_denormal(c.flush_denormal)
        t = time.perf_counter()
        for _ in range(n):
            ours._train_step()
            ours.step += 1
        return (time.perf_counter() - t) / n * 1e3

    def run_ref(start: int, n: int) -> float:
        torch.set_flush_denormal(False)  # nanoGPT leaves PyTorch's default
        t = time.perf_counter()
        for i in range(n):
            ref.train_step(*task.batch("train", c.batch_size, c.seed, start + i, None))
        return (time.perf_counter() - t) / n * 1e3

    run_ours(0, warmup), run_ref(0, warmup)  # both reach the trained regime (denormals appear only then)
    ours_ms, ref_ms = [], []
    for b in range(blocks):
        ours_ms.append(run_ours(warmup + b * block_steps, block_steps))
        ref_ms.append(run_ref(warmup + b * block_steps, block_steps))
    torch.set_flush_denormal(False)
    return statistics.median(ours_ms), statistics.median(ref_ms)


@torch.no_grad()
def reference_val_loss(trainer: NanoTrainer, task, config) -> float:
    trainer.model.eval()
    losses = [
        float(trainer.model(*task.batch("val", config.train.batch_size, config.train.seed + 7919, i, None)))
        for i in range(config.train.eval_iters)
    ]
    return sum(losses) / len(losses)


def main() -> None:
    peak = matmul_gflops()
    report = Report("P4: training nanoGPT's baby configuration", "python benchmarks/train.py")
    ours_ms, ref_ms = interleaved_speed()
    report.rows.append(
        Row("P4 speed", "gpt-baby, 2 cores", "ms/iter", ours_ms / 1e3, ref_ms / 1e3, "nanoGPT", "<= 0.8")
    )

    config, ours = make_qkv([])
    ours_metrics = ours.fit()
    params = sum(p.numel() for p in ours.model.parameters()) - ours.model.position_embedding.embedding.weight.numel()
    report.rows.append(
        Row(
            "P4 quality",
            "bundled corpus, 2000 it",
            "val loss",
            ours_metrics["val_loss"],
            1.88,
            "nanoGPT published (tinyshakespeare)",
            "<= 1",
            unit="nats",
        )
    )
    flops = model_flops_per_iter(config, params)
    notes = [
        f"qkv on the bundled corpus: {ours_metrics['ms_per_iter']:.1f} ms/iter over the whole run, "
        f"{ours_metrics['tokens_per_s']:,.0f} tokens/s, MFU {flops / (ours_ms / 1e3) / 1e9 / peak:.1%} of this "
        f"machine's fp32 matmul rate ({peak:.0f} GFLOP/s on a 2048² matmul); the nanoGPT reference reaches "
        f"MFU {flops / (ref_ms / 1e3) / 1e9 / peak:.1%}.",
    ]
    if TINY_SHAKESPEARE.exists():
        tiny_config, ours_tiny = make_qkv([f"data.path={TINY_SHAKESPEARE}"])
        tiny_metrics = ours_tiny.fit()
        ref = make_reference(tiny_config, tiny_config.train.seed)
        c = tiny_config.train
        for step in range(c.steps):
            ref.train_step(*ours_tiny.task.batch("train", c.batch_size, c.seed, step, None))
        ref_loss = reference_val_loss(ref, ours_tiny.task, tiny_config)
        report.rows.append(
            Row(
                "P4 parity",
                "tinyshakespeare, 2000 it",
                "val loss",
                tiny_metrics["val_loss"],
                ref_loss,
                "nanoGPT reference, same batches",
                "",
                unit="nats",
            )
        )
    notes.append("Val losses are means over the same 20 fixed validation batches (12 × 64 characters) for both sides.")
    report.notes += notes
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'train.md')}")


if __name__ == "__main__":
    main()
