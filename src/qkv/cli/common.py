"""Pieces the CLI verbs share: loading a trained GPT and turning a prompt into token ids."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qkv.errors import ConfigError
from qkv.models.gpt import GPT, GPTConfig
from qkv.tokenizers import Tokenizer
from qkv.training.checkpoint import CheckpointInfo, load_checkpoint_info

__all__ = ["encode_prompt", "load_gpt", "warn"]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_gpt(path: str | Path) -> tuple[GPT, Tokenizer, CheckpointInfo]:
    """A trained GPT, its tokenizer and checkpoint info from a run or checkpoint directory."""
    info = load_checkpoint_info(path, kind="gpt")
    config = GPTConfig.from_dict(info.meta["config"]["model"])
    model = GPT(config)
    info.load_model_weights(model)
    return model.eval(), info.tokenizer(), info


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
