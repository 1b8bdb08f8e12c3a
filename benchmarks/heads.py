"""Head importance for all 72 heads of MiniLM (6 layers x 12 heads) on a 128-token input, three ways in one run.

    python benchmarks/heads.py          # writes benchmarks/results/heads.md (about a minute on 2 cores)

The metric is a sentence-similarity question: the cosine between the input's mean-pooled embedding and another
passage's; a head's importance is how much that cosine changes when the head is zero-ablated.

* exact: ``head_importance(method="exact")``, the 12 heads of a layer ablated together at its ``hook_z`` (one per
  copy of the input), against one full forward per ablated head under ``qkv.intervene`` (what a user would write
  without it); both give the same numbers (max difference reported).
* attribution patching: ``method="attribution"``, one forward and one backward for all heads, against the same
  per-head forwards; with Spearman's rank correlation to the exact scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import qkv
from qkv.analysis import head_importance, rank_correlation
from qkv.attention.multi_head import named_attention_modules
from qkv.benchmarking.measure import time_pair
from qkv.benchmarking.report import Report, Row
from qkv.data.text import load_corpus

RESULTS = Path(__file__).parent / "results"
TOKENS = 128


def passages() -> tuple[str, str]:
    """Two different stretches of the bundled plays."""
    text = load_corpus()
    return text[1000:2200], text[40000:41200]


@torch.no_grad()
def one_forward_per_head(model, ids, mask, metric) -> torch.Tensor:
    """The reference: for each head, one forward with that head zeroed under qkv.intervene, ``(layers, heads)``."""
    named = named_attention_modules(model)
    out = torch.zeros(len(named), max(m.num_heads for _, m in named), dtype=torch.float64)
    clean = metric(model(ids, mask), ids, mask).double()
    for layer, (name, module) in enumerate(named):
        for head in range(module.num_heads):
            with qkv.intervene(model, {f"{name}.hook_z": {head: "zero"}}):
                out[layer, head] = float((metric(model(ids, mask), ids, mask).double() - clean).mean())
    return out


def main() -> None:
    torch.manual_seed(0)
    model = qkv.load_pretrained("minilm")
    tokenizer = qkv.load_tokenizer("minilm")
    first, second = passages()
    ids, mask = (t[:, :TOKENS] for t in tokenizer.batch([first]))
    other_ids, other_mask = (t[:, :TOKENS] for t in tokenizer.batch([second]))
    assert ids.shape == (1, TOKENS), ids.shape
    with torch.no_grad():
        hidden = model(other_ids, other_mask).last_hidden_state
    anchor = (hidden * other_mask[..., None]).sum(1) / other_mask.sum(1, keepdim=True)

    def similarity(output, _ids, attention_mask):
        hidden = output.last_hidden_state * attention_mask[..., None]
        return F.cosine_similarity(hidden.sum(1) / attention_mask.sum(1, keepdim=True), anchor, dim=-1)

    results = {}

    def run(method: str):
        if method == "forwards":
            return lambda: results.__setitem__(method, one_forward_per_head(model, ids, mask, similarity))
        return lambda: results.__setitem__(method, head_importance(model, ids, "zero", similarity, method=method,
                                                                   attention_mask=mask))  # fmt: skip

    report = Report("Head importance (MiniLM, 72 heads, 128 tokens)", "python benchmarks/heads.py")
    setting = f"all-MiniLM-L6-v2, 6 x 12 heads, {TOKENS} tokens, zero-ablation, cosine to another passage"
    t_exact, t_forwards = time_pair(run("exact"), run("forwards"), 3)
    report.rows.append(
        Row("Exact head importance", setting, "time", t_exact, t_forwards, "one forward per head", ">= 1.5",
            speedup=True)
    )  # fmt: skip
    t_attr, t_forwards2 = time_pair(run("attribution"), run("forwards"), 3)
    report.rows.append(
        Row("Attribution patching", setting, "time", t_attr, t_forwards2, "one forward per head", ">= 10",
            speedup=True)
    )  # fmt: skip
    exact, forwards, approx = results["exact"], results["forwards"], results["attribution"]
    difference = float((exact - forwards).abs().max())
    scale = float(forwards.abs().max())
    rho = rank_correlation(exact, approx)
    top = min(10, exact.numel())
    top_exact = set(exact.abs().flatten().topk(top).indices.tolist())
    top_approx = set(approx.abs().flatten().topk(top).indices.tolist())
    report.notes.append(
        f"Exact vs one forward per head: max |difference| {difference:.2e} (largest score {scale:.2e}): equal within "
        "the rounding of fp32 products over a batch of a different size."
    )
    report.notes.append(
        f"Attribution patching vs exact: Spearman rank correlation {rho:.3f}; {len(top_exact & top_approx)} of the "
        f"{top} heads with the largest |exact| score are also among attribution's {top} largest."
    )
    report.notes.append(f"torch {torch.__version__}; medians of 3 alternating runs after a warm-up.")
    print(report.markdown())
    print(f"written to {report.write(RESULTS / 'heads.md')}")


if __name__ == "__main__":
    main()
