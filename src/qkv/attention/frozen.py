"""``frozen_weights()``: a promise that no weight changes for a while, so modules may reuse tensors derived from them.

Decoding calls a model hundreds of times with the same weights; re-deriving the stacked Q/K/V weight or a transposed
output layer on every call wastes time. Tensor version counters cannot tell reliably whether a weight changed (fused
optimizers update in place without bumping them), so reuse is allowed only inside this explicit context, and every
entry starts a new generation: nothing derived in one context is reused in another.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.hooks import unhooked

T = TypeVar("T")

__all__ = ["FrozenLinear", "derived", "frozen_linear", "frozen_weights", "linear_pair", "reusing"]

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


def reusing() -> bool:
    """True where tensors derived from weights may be kept: inside :func:`frozen_weights`, without autograd, and
    outside ``torch.compile`` (a compiled graph plans its own layouts and cannot trace a ContextVar)."""
    return not torch.compiler.is_compiling() and _generation.get() is not None and not torch.is_grad_enabled()


def derived(owner: nn.Module, name: str, make: Callable[[], T]) -> T:
    """``make()``, computed once per :func:`frozen_weights` context (without autograd) and kept on ``owner``;
    outside such a context it is computed on every call and nothing is kept."""
    slot = f"_qkv_derived_{name}"
    if torch.compiler.is_compiling():  # a compiled graph plans its own layouts (and cannot trace a ContextVar)
        return make()
    generation = _generation.get()
    if generation is None or torch.is_grad_enabled():
        owner.__dict__.pop(slot, None)
        return make()
    cached = owner.__dict__.get(slot)
    if cached is not None and cached[0] == generation:
        return cached[1]
    value = make()
    owner.__dict__[slot] = (generation, value)
    return value


def frozen_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)``; inside :func:`frozen_weights` the weight is used in a cached ``(in, out)`` layout.

    Decoding multiplies one row by each weight, a vector-matrix product whose speed on CPU is set by how fast the
    weight streams from memory; the ``(in, out)`` layout streams it far better than ``F.linear``'s ``(out, in)``
    (2.5x for a GPT-2 output layer, measured in benchmarks/pretrained.py).
    """
    rows = x.numel() // max(x.shape[-1], 1)
    if not reusing() or rows > 16:  # many rows: a GEMM, either layout is fine
        return F.linear(x, layer.weight, layer.bias)
    weight_t = derived(layer, "weight_t", lambda: layer.weight.detach().t().contiguous())
    out = x @ weight_t
    return out if layer.bias is None else out + layer.bias


class FrozenLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) whose forward is :func:`frozen_linear`: inside
    :func:`frozen_weights`, a few rows at a time (decoding) multiply a cached ``(in, out)`` copy of the weight. Model
    code calls it as any layer, ``self.lm_head(x)``, and never sees the cache."""

    def __call__(self, x: Tensor) -> Tensor:
        # nobody hooked in (the rule): straight to the product, as the decoding step's layers are called a few
        # hundred times a token
        return frozen_linear(x, self) if unhooked(self) else super().__call__(x)

    def forward(self, x: Tensor) -> Tensor:
        return frozen_linear(x, self)


def linear_pair(x: Tensor, first: nn.Linear, second: nn.Linear) -> tuple[Tensor, Tensor]:
    """``(first(x), second(x))``; inside :func:`frozen_weights`, one vector-matrix product with both weights stacked
    ``(in, out1 + out2)`` and cached on ``first`` (Llama's gate and up projections while decoding)."""
    if not reusing():
        return first(x), second(x)
    stacked = derived(first, "paired_t", lambda: torch.cat([first.weight, second.weight]).t().contiguous())
    a, b = (x @ stacked).split([first.out_features, second.out_features], dim=-1)
    if first.bias is not None and second.bias is not None:
        a, b = a + first.bias, b + second.bias
    return a, b
