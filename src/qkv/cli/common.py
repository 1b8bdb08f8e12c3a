"""Pieces the CLI verbs share: loading a trained model and turning a prompt into token ids."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from qkv.errors import CheckpointError, ConfigError
from qkv.models.gpt import GPT, GPTConfig
from qkv.tokenizers import PairTokenizer, Tokenizer
from qkv.training.checkpoint import CheckpointInfo, load_checkpoint_info

__all__ = ["check_output_files", "encode_prompt", "load_gpt", "load_seq2seq", "warn"]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_output_files(**flags: Path | None) -> None:
    """Refuse an output path that is a directory before any work is done: ``check_output_files(html=args.html)``."""
    for flag, path in flags.items():
        if path is not None and path.is_dir():
            option = "--" + flag.replace("_", "-")
            raise ConfigError(f"{option} {path} is a directory; give a file name inside it, e.g. {path / 'out'}")


def load_gpt(path: str | Path) -> tuple[GPT, Tokenizer, CheckpointInfo]:
    """A trained GPT, its tokenizer and checkpoint info from a run or checkpoint directory."""
    info = load_checkpoint_info(path, kind="gpt")
    config = GPTConfig.from_dict(info.meta["config"]["model"])
    model = GPT(config)
    info.load_model_weights(model)
    return model.eval(), info.tokenizer(), info


def load_seq2seq(path: str | Path) -> tuple[nn.Module, PairTokenizer, CheckpointInfo]:
    """A trained RNN or Transformer encoder-decoder, its pair tokenizer and checkpoint info."""
    from qkv.training.config import RunConfig
    from qkv.training.seq2seq import SEQ2SEQ_KINDS, seq2seq_model

    info = load_checkpoint_info(path)
    kind = info.meta.get("kind")
    if kind not in SEQ2SEQ_KINDS:
        raise CheckpointError(
            f"{info.path} holds a {kind!r} model, but translating needs a sequence-to-sequence model "
            f"({' or '.join(SEQ2SEQ_KINDS)}); train one with e.g. qkv train configs/dates-rnn.toml"
            + ("; for a GPT use qkv generate" if kind == "gpt" else "")
        )
    config = RunConfig.from_dict(info.meta["config"])
    model = seq2seq_model(kind, config.model)
    info.load_model_weights(model)
    tokenizer = info.tokenizer()
    if not isinstance(tokenizer, PairTokenizer):
        raise CheckpointError(f"{info.path}/tokenizer.json is not a source/target (pair) tokenizer")
    return model.eval(), tokenizer, info


def encode_prompt(tokenizer: Tokenizer, prompt: str, context: int) -> torch.Tensor:
    """``(1, n)`` ids of ``prompt``; an empty prompt or unknown characters are errors, a long one is cut on the left."""
    if not prompt:
        raise ConfigError("the prompt is empty: give some text to continue, e.g. --prompt 'Ham.'")
    unknown = getattr(tokenizer, "unknown_characters", lambda _t: [])(prompt)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise ConfigError(
            f"the prompt has characters the model never saw in training: {shown}; remove them "
            "(a character-level model has no id for them)"
        )
    ids = tokenizer.encode(prompt)
    if len(ids) > context:
        warn(f"the prompt has {len(ids)} tokens, more than the context of {context}; keeping the last {context}")
        ids = ids[-context:]
    return torch.tensor([ids], dtype=torch.long)
