"""Seq2seq with and without attention, side by side: exact match, BLEU and chrF on the date and number tasks.

    python benchmarks/seq2seq.py                  # 27 runs, 2 at a time, about 35 minutes on 2 cores
    python benchmarks/seq2seq.py --tasks dates --models none luong-general transformer   # a subset

Every model trains with the same budget on its task's config (configs/<task>-rnn.toml or -transformer.toml, the RNN
variants set by --set-style overrides below), one thread each; then greedy decoding on the test split (same lengths
as training) and the long split (longer inputs than training ever saw). The reference is the no-attention RNN
baseline trained in the same run: the table gives each model's BLEU minus the baseline's (target: >= +3 for every
attention model), the best exact match on dates (target: >= 99%), and how much each loses from test to long
(Bahdanau et al.: attention models lose far less on longer inputs). Writes benchmarks/results/seq2seq.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
TASKS = ("dates", "numbers-en", "numbers-ko")
BASELINE = "none"
MODELS: dict[str, tuple[str, list[str]]] = {  # name -> (config family, overrides)
    "none": ("rnn", ["model.attention=none"]),
    "luong-dot": ("rnn", ["model.score=dot"]),
    "luong-general": ("rnn", ["model.score=general"]),
    "luong-concat": ("rnn", ["model.score=concat"]),
    "luong-location": ("rnn", ["model.score=location"]),
    "local-m": ("rnn", ["model.score=general", "model.alignment=local-m"]),
    "local-p": ("rnn", ["model.score=general", "model.alignment=local-p"]),
    "bahdanau": ("rnn", ["model.attention=bahdanau"]),
    "transformer": ("transformer", []),
}


def train_and_evaluate(task: str, model_name: str, extra: list[str]) -> dict:
    """Train one model in this (worker) process and return its figures."""
    torch.set_num_threads(1)
    from qkv.training import Trainer, load_run_config
    from qkv.training.runs import build_run

    family, overrides = MODELS[model_name]
    config = load_run_config(ROOT / "configs" / f"{task}-{family}.toml", overrides + extra)
    model, data_task, tokenizer = build_run(config)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = Trainer(model, data_task, config.train, out, tokenizer, config.to_dict(), progress=False)
        metrics = trainer.fit()
        seconds = time.perf_counter() - start
    evaluation = metrics["evaluation"]
    return {
        "task": task,
        "model": model_name,
        "parameters": metrics["parameters"],
        "steps": metrics["steps"],
        "batch_size": config.train.batch_size,
        "seconds": seconds,
        "ms_per_iter": metrics["ms_per_iter"],
        "val_loss": metrics["val_loss"],
        "test": {k: v for k, v in evaluation["test"].items()},
        "long": {k: v for k, v in evaluation["long"].items()},
    }


def _budget(results: list[dict]) -> str:
    budgets = sorted({(r["steps"], r.get("batch_size")) for r in results})
    return ", ".join(f"{steps} training steps of {batch} pairs" for steps, batch in budgets)


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# Seq2seq: attention vs the no-attention baseline",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, one thread "
        "per run, two runs at a time on 2 cores. Greedy decoding. Reference = the no-attention RNN baseline (encoder's "
        f"last state only) trained in the same run with the same budget ({_budget(results)}). `ΔBLEU` = model BLEU "
        "- baseline BLEU on the test split; `long` = inputs longer than any training input; `drop` = test BLEU - long "
        "BLEU.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        base = next((r for r in rows if r["model"] == BASELINE), None)
        lines += [
            f"## {task}",
            "",
            "| model | params | train time | test EM % | test BLEU | test chrF | ΔBLEU vs baseline (>= +3) | "
            "long EM % | long BLEU | drop test→long |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t, lg = r["test"], r["long"]
            delta = "" if base is None or r is base else f"{t['bleu'] - base['test']['bleu']:+.1f}"
            if delta:
                delta += " yes" if t["bleu"] - base["test"]["bleu"] >= 3 else " **no**"
            lines.append(
                f"| {r['model']} | {r['parameters']:,} | {r['seconds'] / 60:.1f} min | {t['exact_match']:.1f} | "
                f"{t['bleu']:.1f} | {t['chrf']:.1f} | {delta} | {lg['exact_match']:.1f} | {lg['bleu']:.1f} | "
                f"{t['bleu'] - lg['bleu']:.1f} |"
            )
        best = max(rows, key=lambda r: r["test"]["exact_match"])
        lines += ["", f"Best exact match on {task}: {best['model']}, {best['test']['exact_match']:.1f}%."]
        if task == "dates":
            lines[-1] += " Target >= 99%: " + ("met." if best["test"]["exact_match"] >= 99 else "**not met**.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    parser.add_argument("--out", type=Path, default=RESULTS / "seq2seq.md")
    args = parser.parse_args()
    runs = [(task, model) for task in args.tasks for model in args.models]
    results: dict[tuple[str, str], dict] = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked thread pools
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {pool.submit(train_and_evaluate, task, model, args.extra): (task, model) for task, model in runs}
        for future in tqdm(as_completed(futures), total=len(futures), desc="seq2seq runs", unit="run"):
            r = future.result()
            results[futures[future]] = r
            tqdm.write(
                f"{r['task']:>10} {r['model']:>15}: test EM {r['test']['exact_match']:5.1f} BLEU "
                f"{r['test']['bleu']:5.1f} | long EM {r['long']['exact_match']:5.1f} BLEU {r['long']['bleu']:5.1f} "
                f"| {r['seconds'] / 60:.1f} min"
            )
    ordered = [results[run] for run in runs]
    command = "python benchmarks/seq2seq.py"
    if len(runs) != len(TASKS) * len(MODELS):
        command += f" --tasks {' '.join(args.tasks)} --models {' '.join(args.models)}"
    command += "".join(f" --set {item}" for item in args.extra)
    if args.out != RESULTS / "seq2seq.md":
        command += f" --out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    text = markdown(ordered, command)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(ordered, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
