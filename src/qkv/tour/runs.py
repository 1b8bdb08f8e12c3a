"""The trained runs the tour reads, found or made: a character GPT (the quickstart's) and the two dates translators
(``qkv train configs/dates-rnn.toml`` with and without attention, as the README trains them).

What is missing is trained small on the spot into ``RUNS/tour/`` (a minute at most on 2 cores) and reused by the
next tour, never into a temporary directory; ``train=False`` trains nothing, and the steps that need a missing run
name the commands that make it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkv.training import Trainer

__all__ = [
    "DATES_COMMANDS",
    "GPT_COMMANDS",
    "TOUR_DIR",
    "dates_runs",
    "gpt_run",
    "train_small_dates",
    "train_small_gpt",
]

TOUR_DIR = "tour"  # RUNS/tour/: the small runs the tour trains itself
GPT_RUNS = ("quickstart", "baby")  # full runs reused when present, in this order
ATTENTION_RUN, PLAIN_RUN = "dates-rnn", "dates-rnn-none"
GPT_COMMANDS = "qkv quickstart"
DATES_COMMANDS = (  # the README's commands, which train RUNS/dates-rnn and RUNS/dates-rnn-none
    "qkv train configs/dates-rnn.toml; "
    "qkv train configs/dates-rnn.toml --set model.attention=none --out runs/dates-rnn-none"
)

# the quickstart's GPT, small: 2 layers, 300 steps
SMALL_GPT = ["model.num_layers=2", "model.embed_dim=64", "model.num_heads=4", "model.max_seq_len=64",
             "train.steps=300", "train.eval_interval=300", "train.eval_iters=1", "train.batch_size=16",
             "train.checkpoint_interval=300", "train.warmup_steps=20"]  # fmt: skip

# configs/dates-rnn.toml's model and optimiser, with a small budget
SMALL_DATES: dict[str, Any] = {
    "kind": "rnn-seq2seq",
    "model": {"embed_dim": 64, "hidden_dim": 128, "attention": "luong", "score": "general", "dropout": 0.0},
    "data": {"task": "dates", "train_size": 3000, "eval_size": 20},
    "train": {"steps": 300, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50, "weight_decay": 0.0,
              "eval_interval": 300, "eval_iters": 1, "checkpoint_interval": 300},
}  # fmt: skip
DATES_VARIANTS = {ATTENTION_RUN: [], PLAIN_RUN: ["model.attention=none"]}

Say = Callable[[str], None]


def _trained(path: Path) -> bool:
    """A finished run (its metrics are written last): an interrupted one is resumed, not read."""
    return (path / "metrics.json").exists() and (path / "checkpoints" / "latest").exists()


def _fit(trainer: Trainer, out: Path) -> None:
    if (out / "checkpoints" / "latest").exists():  # a tour interrupted while it trained: carry on from there
        trainer.resume()
    trainer.fit()


def _silent(_: str) -> None:
    pass


def gpt_run(runs: Path, train: bool = True, say: Say = _silent) -> Path | None:
    """The character GPT to read: ``RUNS/quickstart`` (or ``RUNS/baby``), else the tour's own small one (trained
    now if missing and ``train``); None when there is none."""
    for name in (*GPT_RUNS, f"{TOUR_DIR}/gpt"):
        if _trained(runs / name):
            return runs / name
    if not train:
        return None
    return train_small_gpt(runs / TOUR_DIR / "gpt", say)


def dates_runs(runs: Path, train: bool = True, say: Say = _silent) -> dict[str, Path | None]:
    """The translator with attention and the one without, by run name: the README's runs (``RUNS/dates-rnn``,
    ``RUNS/dates-rnn-none``), else the tour's small ones (trained now if missing and ``train``)."""
    found: dict[str, Path | None] = {}
    for name in DATES_VARIANTS:
        own = runs / TOUR_DIR / name
        if _trained(runs / name):
            found[name] = runs / name
        elif _trained(own):
            found[name] = own
        else:
            found[name] = train_small_dates(own, name, say) if train else None
    return found


def train_small_gpt(out: Path, say: Say = _silent) -> Path:
    """A 2-layer character GPT on the bundled plays (300 steps, about 10 s) into ``out``."""
    from qkv.training import load_run_config
    from qkv.training.lm import build_lm

    config = load_run_config(None, SMALL_GPT)
    say(f"tour: training a 2-layer character GPT for {config.train.steps} steps into {out} (reused next time)")
    model, task, tokenizer = build_lm(config)
    _fit(Trainer(model, task, config.train, out, tokenizer, config.to_dict(), progress=False, quiet=True), out)
    return out


def train_small_dates(out: Path, name: str = ATTENTION_RUN, say: Say = _silent) -> Path:
    """One of the dates translators (``name``: with attention or without) trained small (300 steps, about 15 s)
    into ``out``."""
    from qkv.training.config import RunConfig, apply_overrides
    from qkv.training.seq2seq import build_seq2seq

    config = apply_overrides(RunConfig.from_dict(SMALL_DATES), DATES_VARIANTS[name])
    what = "with attention" if config.model.attention != "none" else "without attention"
    say(f"tour: training the dates translator {what} for {config.train.steps} steps into {out} (reused next time)")
    model, task, tokenizer = build_seq2seq(config)
    _fit(Trainer(model, task, config.train, out, tokenizer, config.to_dict(), progress=False, quiet=True), out)
    return out
