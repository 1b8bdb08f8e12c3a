"""A model in evaluation mode for the length of a block, its own mode restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Dropout off inside (``model.eval()``); a model that was training trains again on exit."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
