"""``frozen_weights()``: a promise that no weight changes for a while, so modules may reuse tensors derived from them.

Decoding calls a model hundreds of times with the same weights; re-deriving the stacked Q/K/V weight or a transposed
output layer on every call wastes time. Tensor version counters cannot tell reliably whether a weight changed (fused
optimizers update in place without bumping them), so reuse is allowed only inside this explicit context, and every
entry starts a new generation: nothing derived in one context is reused in another.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["frozen_generation", "frozen_weights"]

_generation: ContextVar[int | None] = ContextVar("qkv_frozen_generation", default=None)
_counter = itertools.count(1)


@contextmanager
def frozen_weights() -> Iterator[None]:
    """Inside, modules may cache tensors derived from their weights (the caller promises not to change weights)."""
    if _generation.get() is not None:  # nested: keep the outer generation
        yield
        return
    token = _generation.set(next(_counter))
    try:
        yield
    finally:
        _generation.reset(token)


def frozen_generation() -> int | None:
    """The current frozen generation, or None outside :func:`frozen_weights`."""
    return _generation.get()
