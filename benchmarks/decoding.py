"""Generation as users run it: a small vocabulary, prompts of several lengths in one batch, speculative decoding.

    python benchmarks/decoding.py          # writes benchmarks/results/decoding.md (about 10 minutes on 2 cores)

* small vocabulary: greedy, batch 1, 32 + 256 tokens, a GPT-2-format model of 6 layers / 384 dim with a 1,000-token
  vocabulary (per-step overhead, not weight streaming, dominates), against transformers' generate; identical tokens.
* step overhead: the same at 12 layers and 64 dim (a 256-token vocabulary), where the products are negligible: a
  decoding step's per-layer overhead (Python, dispatch, small ops) against HF's.
* batched: 8 prompts of 5 to 60 tokens (GPT-2's 50,257 vocabulary), 64 new tokens each, in one left-padded batch:
  qkv against HF generate on the same batch (attention mask and positions from the padding), and against qkv
  generating them one by one (the same tokens, tested in tests/decoding/test_batched.py); where the CPU has native
  bf16 units, the same batch in bf16 against HF's fp32.
* speculative: a 6-layer / 384-dim character GPT and a 2-layer draft trained on the bundled corpus
  (``--train-steps`` each), greedy 256 tokens: qkv.generate(..., draft_model=) against plain qkv.generate;
  identical output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

import qkv
from qkv.attention.frozen import frozen_linear, frozen_weights
from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.devices import native_cpu_bf16
from qkv.training import Trainer, load_run_config
from qkv.training.lm import build_lm

sys.path.insert(0, str(Path(__file__).parent))
from pretrained import generation_row

RESULTS = Path(__file__).parent / "results"


def decode_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The products one decoding step of ``model`` runs, as bias-free linear layers holding copies of its weights
    ``(out, in)`` (Q/K/V stacked into one): what any implementation must stream from memory for every token."""
    weights, stacked = [], set()
    for module in model.modules():
        if isinstance(module, qkv.MultiHeadAttention):
            weights.append(torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight]))
            stacked |= {id(module.q_proj), id(module.k_proj), id(module.v_proj)}
        elif isinstance(module, torch.nn.Linear) and id(module) not in stacked:
            weights.append(module.weight)
    layers = []
    for weight in weights:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
        layer.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
        layers.append(layer)
    return layers


def products_only(layers: list[torch.nn.Linear], rows: int, steps: int) -> Callable[[], None]:
    """A function running ``steps`` decoding steps' products and nothing else: ``rows`` rows (in the layers'
    precision) times each of :func:`decode_layers`' ``layers``, through the layouts and kernels qkv decodes with
    (``frozen_linear`` inside ``frozen_weights``, the layouts derived in the first step, as in generation)."""
    inputs = {layer.in_features: torch.randn(rows, layer.in_features, dtype=layer.weight.dtype) for layer in layers}

    def run() -> None:
        with torch.no_grad(), frozen_weights():
            for _ in range(steps):
                for layer in layers:
                    frozen_linear(inputs[layer.in_features], layer)

    return run


def matmul_floor_row(report: Report, label: str, ours, reference, rows: int, steps: int) -> None:
    """How fast generation could be at best: the decoding steps' matrix products alone (``rows`` x each weight,
    ``steps`` times, through the layouts and kernels qkv decodes with: ``frozen_linear`` inside ``frozen_weights``;
    no attention, no norms, no sampling), timed against HF's whole generation in one run. Its ratio is the largest
    speed-up over HF that any implementation with these products (in the model's precision) can reach."""
    layers = decode_layers(ours)
    t_floor, t_hf = time_pair(products_only(layers, rows, steps), reference, 3)
    megabytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers) / 2**20
    report.rows.append(
        Row(
            label,
            f"{len(layers)} products, {megabytes:.0f} MiB a step",
            "speed-up",
            t_floor,
            t_hf,
            "HF generate",
            ">= 2",
            speedup=True,
        )
    )


def small_vocabulary(report: Report) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=1024, vocab_size=1000)
    hf = transformers.GPT2LMHeadModel(config).eval()
    setting = "6 layers, 384 dim, batch 1, 32+256 tokens"
    ours, run_hf = generation_row(report, "Generation, 1k vocabulary", hf, setting, 1000)
    matmul_floor_row(report, "Bound: its matmuls alone vs HF", ours, run_hf, rows=1, steps=256)


def step_overhead(report: Report) -> None:
    """What a decoding step costs beyond its arithmetic: a GPT-2-format model of 12 layers only 64 wide (4 heads, a
    256-token vocabulary), whose products are a few microseconds each, so the step is Python, dispatch and small
    ops (norms, attention on one query, cache writes) — the per-step overhead, against HF's."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=64, n_head=4, n_positions=1024, vocab_size=256)
    hf = transformers.GPT2LMHeadModel(config).eval()
    setting = "12 layers, 64 dim, batch 1, 32+256 tokens"
    ours, _ = generation_row(report, "Decoding step overhead (products negligible)", hf, setting, 256, target="")
    bare_step_row(report, ours, new_tokens=256)


def bare_step(model: torch.nn.Module, max_len: int):
    """Greedy decoding of a GPT-2-layout qkv model (LayerNorm, learned positions, an MLP) written as bare ATen calls:
    no modules, no checks, no hooks, no backends; a preallocated cache indexed in place. Not a library path — the
    floor that eager PyTorch sets for the same arithmetic."""
    heads, width = model.config.num_heads, model.config.embed_dim
    head_dim, eps = width // heads, model.config.norm_eps
    layers = []
    for block in model.blocks:
        attn, ffn = block.attn, block.ffn
        stacked = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t().contiguous()
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        layers.append((block.norm1.weight, block.norm1.bias, stacked, bias, attn.out_proj.weight.t().contiguous(),
                       attn.out_proj.bias, block.norm2.weight, block.norm2.bias, ffn.up.weight.t().contiguous(),
                       ffn.up.bias, ffn.down.weight, ffn.down.bias, ffn.activation))  # fmt: skip
    tokens, positions = model.token_embedding.weight, model.position_embedding.embedding.weight
    head, final = model.lm_head.weight.t().contiguous(), model.final_norm
    keys = torch.zeros(len(layers), heads, max_len, head_dim)
    values = torch.zeros_like(keys)

    def forward(ids: torch.Tensor, start: int) -> torch.Tensor:
        n = ids.shape[0]
        x = tokens[ids] + positions[start : start + n]
        for i, (w1, b1, wqkv, bqkv, wo, bo, w2, b2, wup, bup, wdown, bdown, act) in enumerate(layers):
            h = torch.layer_norm(x, (width,), w1, b1, eps)
            qkv_ = torch.addmm(bqkv, h, wqkv).view(n, 3, heads, head_dim).transpose(0, 2)  # (heads, 3, n, dim)
            keys[i, :, start : start + n] = qkv_[:, 1]
            values[i, :, start : start + n] = qkv_[:, 2]
            o = torch.nn.functional.scaled_dot_product_attention(
                qkv_[:, 0], keys[i, :, : start + n], values[i, :, : start + n], is_causal=n > 1
            )
            x = torch.addmm(bo, o.transpose(0, 1).reshape(n, width), wo) + x
            h = act(torch.addmm(bup, torch.layer_norm(x, (width,), w2, b2, eps), wup))
            x = torch.nn.functional.linear(h, wdown, bdown) + x
        return torch.layer_norm(x[-1:], (width,), final.weight, final.bias, eps) @ head

    def generate(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        out = [prompt]
        with torch.inference_mode():
            logits, start = forward(prompt, 0), prompt.shape[0]
            for step in range(new_tokens):
                out.append(logits.argmax(-1))
                if step + 1 < new_tokens:
                    logits, start = forward(out[-1], start), start + 1
        return torch.cat(out)

    return generate


def bare_step_row(report: Report, ours: torch.nn.Module, new_tokens: int) -> None:
    """qkv.generate against the same greedy decoding as bare ATen calls (:func:`bare_step`): identical tokens, and
    the ratio says how far qkv's step is from eager PyTorch's floor."""
    prompt = torch.randint(0, ours.config.vocab_size, (32,), generator=torch.Generator().manual_seed(0))
    bare = bare_step(ours, 32 + new_tokens)
    results = {}

    def run_ours():
        results["ours"] = qkv.generate(ours, prompt[None], max_new_tokens=new_tokens)[0]

    def run_bare():
        results["bare"] = bare(prompt, new_tokens)

    t_ours, t_bare = time_pair(run_ours, run_bare, 3)
    assert torch.equal(results["ours"], results["bare"]), "the bare ATen step decoded other tokens than qkv"
    setting = "the same model and tokens; no modules, checks or hooks (benchmarks/decoding.py: bare_step)"
    report.rows.append(Row("Bound: the step as bare ATen calls", setting, "time", t_ours, t_bare,
                           "bare ATen calls", ""))  # fmt: skip


def batched(report: Report, new_tokens: int = 64) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=1024, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.generation_config.eos_token_id = None
    directory = scratch_directory("qkv-bench-decoding-")
    hf.save_pretrained(directory)
    ours = qkv.load_pretrained(directory)
    g = torch.Generator().manual_seed(1)
    lengths = [5, 12, 20, 28, 36, 44, 52, 60]
    prompts = [torch.randint(1, 50257, (n,), generator=g) for n in lengths]
    padded = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for row, prompt in enumerate(prompts):
        padded[row, -len(prompt) :], mask[row, -len(prompt) :] = prompt, 1
    tokens = new_tokens * len(prompts)

    def run_batch():
        return qkv.generate(ours, prompts, max_new_tokens=new_tokens)

    def run_hf():
        with torch.no_grad():
            return hf.generate(padded, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def run_one_by_one():
        return [qkv.generate(ours, p[None], max_new_tokens=new_tokens) for p in prompts]

    t_batch, t_hf = time_pair(run_batch, run_hf, 3)
    setting = f"8 prompts of 5-60 tokens, {new_tokens} new each, 6 layers, 384 dim, 50k vocab"
    report.rows.append(
        Row("Batched prompts vs HF", setting, "speed-up", t_batch, t_hf, "HF generate", ">= 2", speedup=True)
    )
    matmul_floor_row(report, "Bound: its matmuls alone vs HF", ours, run_hf, rows=len(prompts), steps=new_tokens)
    t_batch2, t_single = time_pair(run_batch, run_one_by_one, 3)
    report.rows.append(
        Row(
            "Batched prompts vs one by one",
            setting,
            "speed-up",
            t_batch2,
            t_single,
            "qkv one by one",
            ">= 4",
            speedup=True,
        )
    )
    fp32_batch = run_batch()
    same = all(torch.equal(a, b[0]) for a, b in zip(fp32_batch, run_one_by_one()))
    report.notes.append(
        f"Batched: {tokens / t_batch:,.0f} tokens/s (qkv batch) vs {tokens / t_hf:,.0f} (HF batch) vs "
        f"{tokens / t_single:,.0f} (qkv one by one); batch output equal to one by one: {same}."
    )
    if not native_cpu_bf16():  # qkv refuses bf16 where it would be emulated (slower than fp32)
        report.notes.append("Batched bf16 not measured: this CPU has no native bf16 units.")
        return
    ours_bf16 = qkv.load_pretrained(directory, dtype="bf16")

    def run_batch_bf16():
        return qkv.generate(ours_bf16, prompts, max_new_tokens=new_tokens)

    t_bf16, t_hf = time_pair(run_batch_bf16, run_hf, 3)
    report.rows.append(
        Row(
            "Batched prompts, qkv bf16 vs HF fp32",
            setting,
            "speed-up",
            t_bf16,
            t_hf,
            "HF generate",
            ">= 2",
            speedup=True,
        )
    )
    matmul_floor_row(report, "Bound: its bf16 matmuls alone vs HF", ours_bf16, run_hf, rows=len(prompts),
                     steps=new_tokens)  # fmt: skip
    fp32_tokens = torch.cat([t[-new_tokens:] for t in fp32_batch])  # (equal to one by one: checked above)
    bf16_tokens = torch.cat([t[-new_tokens:] for t in run_batch_bf16()])
    report.notes.append(
        f"Batched bf16: {tokens / t_bf16:,.0f} tokens/s; {(bf16_tokens == fp32_tokens).float().mean():.3f} of its "
        "tokens equal fp32's (free-running, so one early difference changes the rest of a row; "
        "benchmarks/precision.py measures agreement step by step)."
    )


def train_char_gpt(out: Path, layers: int, dim: int, heads: int, steps: int) -> torch.nn.Module:
    overrides = [
        f"model.num_layers={layers}",
        f"model.embed_dim={dim}",
        f"model.num_heads={heads}",
        "model.max_seq_len=320",
        f"train.steps={steps}",
        f"train.eval_interval={steps}",
        "train.eval_iters=2",
        f"train.checkpoint_interval={steps}",
        "train.warmup_steps=20",
        "train.batch_size=8",
    ]
    config = load_run_config(None, overrides)
    model, task, tokenizer = build_lm(config)
    Trainer(model, task, config.train, out, tokenizer, config.to_dict(), progress=False).fit()
    return model.eval()


def speculative(report: Report, steps: int, new_tokens: int = 256, k: int = 4) -> None:
    work = scratch_directory("qkv-bench-decoding-")
    target = train_char_gpt(work / "target", 6, 384, 6, steps)
    draft = train_char_gpt(work / "draft", 2, 128, 4, steps)  # (same seed and data: the same character vocabulary)
    prompt = torch.tensor([[int(t) for t in range(1, 9)]])  # 8 characters of the vocabulary
    results = {}

    def run_speculative():
        results["spec"] = qkv.generate(
            target, prompt, max_new_tokens=new_tokens, draft_model=draft, num_draft_tokens=k, return_dict=True
        )

    def run_plain():
        results["plain"] = qkv.generate(target, prompt, max_new_tokens=new_tokens)

    t_spec, t_plain = time_pair(run_speculative, run_plain, 3)
    assert torch.equal(results["spec"].sequences, results["plain"]), "speculative output differs from plain greedy"
    rate = results["spec"].acceptance_rate
    setting = f"6-layer target, 2-layer draft, {steps} steps each, greedy {new_tokens} tokens, k={k}"
    report.rows.append(
        Row("Speculative decoding", setting, "speed-up", t_spec, t_plain, "plain greedy", ">= 1.5", speedup=True)
    )
    report.notes.append(f"Speculative: acceptance rate {rate:.2f}; identical output to plain greedy.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=400, help="training steps of the speculative pair (400)")
    args = parser.parse_args()
    report = Report("Decoding (small vocabulary, batched prompts, speculative)", "python benchmarks/decoding.py")
    report.precision = "fp32, bf16 (its batched row)" if native_cpu_bf16() else "fp32"
    small_vocabulary(report)
    step_overhead(report)
    batched(report)
    speculative(report, args.train_steps)
    report.notes.append(f"transformers {transformers.__version__}; medians of 3 alternating runs after a warm-up.")
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'decoding.md')}")


if __name__ == "__main__":
    main()
