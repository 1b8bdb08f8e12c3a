"""``frozen_weights()``: a promise that no weight changes for a while, so modules may reuse tensors derived from them.

Decoding calls a model hundreds of times with the same weights; re-deriving the stacked Q/K/V weight or a transposed
output layer on every call wastes time. Tensor version counters cannot tell reliably whether a weight changed (fused
optimizers update in place without bumping them), so reuse is allowed only inside this explicit context, and every
entry starts a new generation: nothing derived in one context is reused in another.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.hooks import DirectCall, unhooked
from qkv.attention.int8 import Int8Linear, int8_linear

T = TypeVar("T")

__all__ = [
    "BF16_PACKS",
    "ONEDNN_AVAILABLE",
    "PACKED_MAX_ROWS",
    "PACKED_MIN_WEIGHTS",
    "FrozenLinear",
    "derived",
    "frozen_linear",
    "frozen_weights",
    "kept",
    "linear_pair",
    "new_generation",
    "reusing",
    "stacked_linear",
]

_generation: ContextVar[int | None] = ContextVar("qkv_frozen_generation", default=None)
_counter = itertools.count(1)
# derived tensors are kept beside their modules, not in them: a deep copy or a pickle of a model must not carry
# them along (oneDNN's packed weights cannot be copied at all), and a module that is freed takes its entries along
_kept: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[int, object]]] = weakref.WeakKeyDictionary()

# fp32 products of 2 to PACKED_MAX_ROWS rows inside frozen_weights (a sentence to embed, a short prompt, a batch of
# decoding steps) by a weight of at least PACKED_MIN_WEIGHTS entries run on oneDNN's GEMM, the weight packed once
# into its blocked layout (sized for 16 rows: packed for 1 row, 15-row products took 1.9x as long). Measured on a
# 2-core AMD EPYC (AVX2), one layer's four products: 0.34-0.98x F.linear's time from 2 to 256 rows at GPT-2's shapes,
# 0.56-0.92x at MiniLM's (F.linear calls MKL, whose small products are slow on that CPU), 1.01-1.06x at 512 rows, so
# longer inputs keep F.linear. A oneDNN call costs ~40 us however small: a 64x192 layer took 2.4-3.8x as long
# packed, a 384x384 one 0.97-1.18x at 8-32 rows, 256x1024 and larger 0.71-1.02x; one row keeps the (in, out)
# layout below (packed, MiniLM's layers took 1.05-2x as long, GPT-2's 0.78-1.03x). The packed weight is one more
# copy of a layer's weight, kept like the (in, out) one. Builds without oneDNN keep the layouts below.
PACKED_MAX_ROWS = 256
PACKED_MIN_WEIGHTS = 1 << 18  # 1 MiB of fp32
_PACKED_FOR_ROWS = 16
ONEDNN_AVAILABLE = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
# bf16 products pack from one row up, wherever oneDNN has bf16 kernels (AVX-512 and newer): ATen's own bf16
# vector-matrix products stream a weight at 15-29 GB/s there, oneDNN's packed ones at 33-70 GB/s (one row, GPT-2
# small's shapes, 2-core AMD EPYC with AVX512-BF16), which took a bf16 decoding step of that shape from 24-28 ms to
# 17 ms with the same tokens. (fp32 one-row products keep the layouts above: packing gained only ~10% there, and
# on AVX2 small layers lost.)
BF16_PACKS = ONEDNN_AVAILABLE and bool(
    getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()  # (absent from older builds)
)


@contextmanager
def frozen_weights(generation: int | None = None) -> Iterator[None]:
    """Inside, modules may cache tensors derived from their weights (the caller promises not to change weights).

    Each context starts a new generation, so nothing derived earlier is reused. A caller that owns a model nobody else
    can change (``qkv.embed``'s cached encoder) passes a ``generation`` of its own (:func:`new_generation`) to every
    context, and the derived tensors of one call serve the next. Contexts nest, an inner one keeping the outer
    generation: several ``qkv.generate`` calls inside one ``with frozen_weights():`` derive their layouts once (a
    bf16 GPT-2-small-shaped model spends ~90 ms of oneDNN packing per call on a 2-core CPU), on the caller's promise
    that no weight changes in between.
    """
    if _generation.get() is not None:  # nested: keep the outer generation
        yield
        return
    token = _generation.set(generation if generation is not None else next(_counter))
    try:
        yield
    finally:
        _generation.reset(token)


def new_generation() -> int:
    """A generation number never handed out before, for :func:`frozen_weights` ``(generation=...)``."""
    return next(_counter)


def reusing() -> bool:
    """True where tensors derived from weights may be kept: inside :func:`frozen_weights`, without autograd, and
    outside ``torch.compile`` (a compiled graph plans its own layouts and cannot trace a ContextVar)."""
    return not torch.compiler.is_compiling() and _generation.get() is not None and not torch.is_grad_enabled()


def derived(owner: nn.Module, name: str, make: Callable[[], T]) -> T:
    """``make()``, computed once per :func:`frozen_weights` context (without autograd) and kept for ``owner``;
    outside such a context it is computed on every call and nothing is kept."""
    if torch.compiler.is_compiling():  # a compiled graph plans its own layouts (and cannot trace a ContextVar)
        return make()
    generation = _generation.get()
    slots = _kept.get(owner)
    if generation is None or torch.is_grad_enabled():
        if slots is not None:
            slots.pop(name, None)
        return make()
    cached = slots.get(name) if slots is not None else None
    if cached is not None and cached[0] == generation:
        return cast(T, cached[1])
    value = make()
    _kept.setdefault(owner, {})[name] = (generation, value)
    return value


def kept(owner: nn.Module, name: str) -> object | None:
    """What :func:`derived` keeps for ``owner`` under ``name`` (from its latest context), or None."""
    slots = _kept.get(owner)
    cached = slots.get(name) if slots is not None else None
    return None if cached is None else cached[1]


def frozen_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)``; inside :func:`frozen_weights`, 2 to ``PACKED_MAX_ROWS`` rows of fp32 input (1 to
    ``PACKED_MAX_ROWS`` of bf16 where :data:`BF16_PACKS`) by a weight of at least ``PACKED_MIN_WEIGHTS`` entries
    multiply a cached oneDNN-packed copy (see the constants' comments), and one fp32 row by a layer that widens (or
    keeps) its input multiplies a cached ``(in, out)`` copy.

    Decoding multiplies one row by each weight, a vector-matrix product whose speed on CPU is set by how fast the
    weight streams from memory. Which layout streams faster depends on the shape: for a layer with at least as many
    outputs as inputs (Q/K/V, an up projection, the output layer) the ``(in, out)`` layout is 1.4-1.8x faster than
    ``F.linear``'s ``(out, in)`` (2.5x for a GPT-2 output layer, measured in benchmarks/pretrained.py); for a layer
    that narrows (a feed-forward's down projection, 3072 -> 768) ``F.linear`` is 1.2-1.6x faster, each output being
    one long contiguous dot product (one row, 2 threads, AVX2; weights cycled so that they stream from memory).
    """
    if not reusing():
        return F.linear(x, layer.weight, layer.bias)
    if _packs(x, (layer,)):
        return _packed_product(x, derived(layer, "packed", lambda: _pack(layer.weight)), layer.bias)
    # many rows (a GEMM: either layout is fine), or a narrowing layer: F.linear's own layout
    if x.numel() > 16 * x.shape[-1] or layer.in_features > layer.out_features:
        return F.linear(x, layer.weight, layer.bias)
    weight_t = derived(layer, "weight_t", lambda: layer.weight.detach().t().contiguous())
    bias = layer.bias
    out = x @ weight_t
    return out if bias is None else out + bias


class FrozenLinear(DirectCall, nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) whose forward is :func:`frozen_linear`: inside
    :func:`frozen_weights`, a few rows at a time (decoding) multiply a cached ``(in, out)`` copy of the weight when
    the layer widens its input. Model code calls it as any layer, ``self.lm_head(x)``, and never sees the cache."""

    def forward(self, x: Tensor) -> Tensor:
        return frozen_linear(x, self)


def linear_pair(x: Tensor, first: nn.Module, second: nn.Module) -> tuple[Tensor, Tensor]:
    """``(first(x), second(x))``; inside :func:`frozen_weights`, one product with both weights stacked (cached on
    ``first``): Llama's gate and up projections while decoding."""
    if not reusing():
        return first(x), second(x)
    a, b = stacked_linear(x, first, "paired", (first, second)).split([_width(first), _width(second)], dim=-1)
    return a, b


def stacked_linear(x: Tensor, owner: nn.Module, name: str, layers: tuple[nn.Module, ...]) -> Tensor:
    """``x (..., in) @ [W_1; ...; W_n]ᵀ + [b_1; ...; b_n]`` -> ``(..., out_1 + ... + out_n)``: one product for layers
    that read the same input (Q, K and V), which is faster than n small ones and gives the same numbers.

    The stack is derived from the weights (:func:`derived`, kept on ``owner`` under ``name`` inside
    :func:`frozen_weights`): float weights stacked and transposed ``(in, sum out)`` for fast vector-matrix products;
    :class:`~qkv.attention.int8.Int8Linear` layers' int8 rows and per-channel scales concatenated, which is exactly
    each layer's own quantization. Layers of mixed kinds are applied one by one, and so are layers with a hook
    attached (a hook on ``q_proj`` sees ``q_proj``'s own call, e.g. calibration recording its inputs).
    """
    kinds = {type(layer) for layer in layers}
    int8 = all(issubclass(kind, Int8Linear) for kind in kinds)
    if not (int8 or all(issubclass(kind, nn.Linear) for kind in kinds)) or not all(map(unhooked, layers)):
        return torch.cat([layer(x) for layer in layers], dim=-1)
    if int8:
        qweight, scale, bias = derived(owner, name, lambda: _stack_int8(layers))
        return int8_linear(x, qweight, scale, bias)
    if reusing() and _packs(x, cast(tuple[nn.Linear, ...], layers)):
        packed, bias = derived(owner, f"{name}_packed", lambda: _stack_packed(layers))
        return _packed_product(x, packed, bias)
    weight_t, bias = derived(owner, name, lambda: _stack_float(layers))
    out = x @ weight_t
    return out if bias is None else out + bias


def _width(layer: nn.Module) -> int:
    return int(layer.out_features)  # type: ignore[arg-type]  # (nn.Linear and Int8Linear both have it)


def _stacked_bias(layers: tuple[nn.Module, ...], like: Tensor) -> Tensor | None:
    """The layers' biases end to end (zeros for a layer without one); None when none has one."""
    biases = [getattr(layer, "bias", None) for layer in layers]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else like.new_zeros(_width(layer)) for b, layer in zip(biases, layers)])


def _stack_float(layers: tuple[nn.Module, ...]) -> tuple[Tensor, Tensor | None]:
    weight_t = torch.cat([layer.weight for layer in layers]).t()  # type: ignore[misc]
    if not torch.is_grad_enabled():  # (with autograd the transpose stays a view: no copy to differentiate through)
        weight_t = weight_t.contiguous()
    return weight_t, _stacked_bias(layers, weight_t)


def _packs(x: Tensor, layers: tuple[nn.Linear, ...]) -> bool:
    """Whether ``x``'s product with the layers' weights (stacked) runs on a oneDNN-packed weight (see
    ``PACKED_MAX_ROWS``): inside :func:`frozen_weights` only, which the caller checks."""
    if x.dtype == torch.float32:
        fewest = 2
    elif x.dtype == torch.bfloat16 and BF16_PACKS:
        fewest = 1
    else:
        return False
    if not (
        ONEDNN_AVAILABLE and x.device.type == "cpu" and fewest <= x.numel() // max(x.shape[-1], 1) <= PACKED_MAX_ROWS
    ):
        return False
    weights = [layer.weight for layer in layers]  # (read once: a module attribute costs ~0.5 us a read)
    return sum(w.numel() for w in weights) >= PACKED_MIN_WEIGHTS and all(w.dtype == x.dtype for w in weights)


def _pack(weight: Tensor) -> Tensor:
    """``weight (out, in)`` in oneDNN's blocked layout for :func:`_packed_product` (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACKED_FOR_ROWS)


def _packed_product(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x (..., in) @ Wᵀ + bias`` -> ``(..., out)`` with ``W`` packed by :func:`_pack`."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, None if bias is None else bias.detach(), "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _stack_packed(layers: tuple[nn.Module, ...]) -> tuple[Tensor, Tensor | None]:
    weight = torch.cat([layer.weight for layer in layers])  # type: ignore[misc]
    return _pack(weight), _stacked_bias(layers, weight)


def _stack_int8(layers: tuple[nn.Module, ...]) -> tuple[Tensor, Tensor, Tensor | None]:
    qweight = torch.cat([layer.qweight for layer in layers])  # type: ignore[misc]
    scale = torch.cat([layer.scale for layer in layers])  # type: ignore[misc]
    return qweight, scale, _stacked_bias(layers, scale.float())
