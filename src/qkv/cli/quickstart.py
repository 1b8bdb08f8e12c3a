"""``qkv quickstart``, the main job: train a small GPT on bundled Shakespeare, sample it, draw its attention."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import cast

from qkv.cli.common import add_device_option

__all__ = ["QUICKSTART_OVERRIDES", "add_parser"]

# A character-level GPT (4 layers, 4 heads, 128 dim, context 128): 45 s of training measured on 2 CPU cores.
QUICKSTART_OVERRIDES = [
    "model.num_layers=4",
    "model.num_heads=4",
    "model.embed_dim=128",
    "model.max_seq_len=128",
    "model.linear_bias=false",
    "data.tokenizer='char'",
    "train.steps=1500",
    "train.batch_size=12",
    "train.lr=2e-3",
    "train.min_lr=2e-4",
    "train.warmup_steps=100",
    "train.eval_interval=500",
    "train.checkpoint_interval=500",
]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="train a small GPT on bundled Shakespeare, print a sample and draw its attention",
        description="The five-minute tour: trains a character-level GPT on the bundled Shakespeare corpus "
        "(under a minute of training on 2 cores), prints a sample, and draws its attention: a PNG grid and an "
        "interactive page.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run directory (runs/quickstart)")
    p.add_argument("--steps", type=int, help="training steps (1500); fewer for a faster, worse model")
    p.add_argument("--prompt", default="Ham.\n", help="the sample's prompt (a speaker, as the plays write them)")
    p.add_argument("--max-new-tokens", type=int, default=300, help="length of the sample (300)")
    p.add_argument("--fresh", action="store_true", help="start over even if --out already holds a trained run")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    from qkv.cli.attention import attention_report
    from qkv.cli.common import (
        check_output_dir,
        encode_prompt,
        non_text_tokens,
        on_interrupt,
        qkv_command,
        resume_hint,
    )
    from qkv.decoding import generate
    from qkv.errors import ConfigError
    from qkv.models.protocols import CausalLM
    from qkv.runs import load_causal_lm
    from qkv.training import Trainer, load_run_config
    from qkv.training.lm import build_lm

    overrides = [*QUICKSTART_OVERRIDES, f"train.device={args.device!r}"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1 (the sample's length), got {args.max_new_tokens}")
    out: Path = args.out
    check_output_dir("out", out)
    config = load_run_config(None, overrides)
    again = "the same qkv quickstart command"  # (with the same --out and --steps: the flags are the user's)
    trained = not args.fresh and (out / "metrics.json").exists() and (out / "checkpoints" / "latest").exists()
    # every argument is checked before the training, so a bad prompt never costs its minutes
    if trained:
        loaded, tokenizer, _ = load_causal_lm(out, args.device)
        encode_prompt(tokenizer, args.prompt, cast(CausalLM, loaded).config.max_seq_len)
        print(f"{out} already holds a trained model (use --fresh to train again)")
    else:
        model, task, tokenizer = build_lm(config)
        encode_prompt(tokenizer, args.prompt, config.model.max_seq_len)
        if args.fresh and out.exists():
            shutil.rmtree(out)
        started = time.perf_counter()
        print(
            f"training a {config.model.num_layers}-layer character-level GPT on the bundled Shakespeare "
            f"for {config.train.steps} steps..."
        )
        trainer = Trainer(model, task, config.train, out, tokenizer, config.to_dict(), progress=not args.no_progress)
        if (out / "checkpoints" / "latest").exists():  # an interrupted quickstart: carry on rather than start over
            print(f"resuming the interrupted run in {out} from step {trainer.resume()} (use --fresh to start over)")
        with on_interrupt("training", kept="nothing was saved yet"), resume_hint(again):
            metrics = trainer.fit()
        print(
            f"validation loss {metrics['val_loss']:.3f} (perplexity {metrics['val_perplexity']:.2f}), "
            f"{metrics['ms_per_iter']:.1f} ms/step, {time.perf_counter() - started:.0f} s"
        )
        loaded, tokenizer, _ = load_causal_lm(out, args.device)
    lm = cast(CausalLM, loaded)  # (a CAUSAL_LM family)
    prompt = encode_prompt(tokenizer, args.prompt, lm.config.max_seq_len)
    with on_interrupt("sampling and drawing", kept=f"the trained model is kept in {out}; {again} samples and draws"):
        ids = generate(
            lm, prompt, max_new_tokens=args.max_new_tokens, strategy="sample", temperature=0.8, seed=0,
            suppress_tokens=non_text_tokens(tokenizer),
        )  # fmt: skip
        sample = tokenizer.decode(ids[0].tolist())
        print("\n---- sample ----\n" + sample + "\n----------------\n")
        (out / "sample.txt").write_text(sample, encoding="utf-8")
        # the attention report over the sample's last 48 characters: the PNG grid and the interactive page
        png, page = attention_report(
            model,
            tokenizer,
            None,
            out / "attention.png",
            out / "attention.html",
            title="quickstart: the sample's last 48 characters",
            token_ids=ids[:, -48:],
        )
    print(
        f"model:     {out / 'checkpoints'}\nmetrics:   {out / 'metrics.json'}\nsample:    {out / 'sample.txt'}\n"
        f"attention: {png}\nexplorer:  {page} (open it in a browser; it works offline)\n"
        f"more text: {qkv_command()} generate {shlex.quote(str(out))} --prompt $'Ham.\\n'"
    )
    return 0
