"""From a run config to the model, task and tokenizer it trains, for every kind of run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from qkv.attention.memory import format_bytes
from qkv.errors import OutOfMemoryError
from qkv.models.families import CAUSAL_LM, IMAGE, get_family
from qkv.training.config import RunConfig

__all__ = ["build_run"]


def build_run(config: RunConfig, tokenizer: Any = None, data_dir: Path | None = None) -> tuple[nn.Module, Any, Any]:
    """``(model, task, tokenizer)`` of ``config.kind``: a language-modelling run for a causal LM family, a
    source/target run for a sequence-to-sequence one, an image run (the "tokenizer" is the image format) for an
    image model. ``data_dir``: where a language-modelling run's text is prepared (see
    :func:`qkv.training.lm.build_lm`).

    A model too large for memory (``model.*`` sizes by the thousand) is refused as :class:`OutOfMemoryError`
    naming its kind and the allocation that failed, not a PyTorch allocator error from inside a layer."""
    try:
        return _build(config, tokenizer, data_dir)
    except RuntimeError as exc:  # (torch.OutOfMemoryError, a GPU's, is one too)
        failed = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes|out of memory", str(exc))
        if failed is None:
            raise
        size = f" ({format_bytes(int(failed.group(1)))} at once)" if failed.group(1) else ""
        raise OutOfMemoryError(
            f"the {config.kind} model this config describes does not fit in memory{size}; make its model.* sizes "
            "smaller"
        ) from None


def _build(config: RunConfig, tokenizer: Any, data_dir: Path | None) -> tuple[nn.Module, Any, Any]:
    protocol = get_family(config.kind).protocol
    if protocol == IMAGE:
        from qkv.training.images import build_images

        return build_images(config, tokenizer)
    if protocol == CAUSAL_LM:
        from qkv.training.lm import build_lm

        return build_lm(config, tokenizer, data_dir)
    from qkv.training.seq2seq import build_seq2seq

    return build_seq2seq(config, tokenizer)
