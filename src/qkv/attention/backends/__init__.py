"""Attention backends: one registry, one semantics, one chooser.

``reference`` materialises everything (the oracle), ``chunked`` streams key blocks in O(N) memory, ``fused`` calls
PyTorch's SDPA, ``flex`` PyTorch's compiled FlexAttention (asked for by name only: it compiles per shape), and
``auto`` picks among the first three with :func:`choose_backend`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from qkv.attention.backends.chunked import DEFAULT_BLOCK_K, chunked_attention
from qkv.attention.backends.flex import flex_attention_backend, flex_unsupported_reason
from qkv.attention.backends.fused import fused_attention, fused_unsupported_reason
from qkv.attention.backends.reference import reference_attention
from qkv.attention.call import AttentionCall
from qkv.errors import BackendUnsupportedError, UnknownNameError

__all__ = ["BACKENDS", "available_backends", "choose_backend", "run_backend"]

Backend = Callable[[AttentionCall], tuple[Tensor, "Tensor | None"]]
BACKENDS: dict[str, Backend] = {
    "reference": reference_attention,
    "chunked": chunked_attention,
    "fused": fused_attention,
    "flex": flex_attention_backend,
}
_UNSUPPORTED = {"fused": fused_unsupported_reason, "flex": flex_unsupported_reason}

#: q_len × k_len above which materialising a score matrix per head is not worth it (16 MiB of fp32 per head).
MATERIALISE_LIMIT = 1 << 22


def available_backends() -> list[str]:
    """The names ``qkv.attend(backend=...)`` accepts: ``auto`` and every backend."""
    return ["auto", *BACKENDS]


def _narrow_band(call: AttentionCall) -> bool:
    """True when a causal/window band leaves most key blocks invisible, so block skipping pays off."""
    span = call.span
    if span.left is None or call.k_len < 4 * DEFAULT_BLOCK_K:
        return False
    width = span.left + (span.right if span.right is not None else call.k_len) + 1
    return width * 4 <= call.k_len


def _sparse_blocks(call: AttentionCall) -> bool:
    """True when a block mask made by the caller leaves most tiles empty (documents, windows, dilation)."""
    return call.blocks is not None and call.k_len >= 4 * DEFAULT_BLOCK_K and call.blocks.density() <= 0.25


def choose_backend(call: AttentionCall) -> str:
    """The backend ``auto`` runs, by these rules in order:

    1. weights wanted: ``reference`` (weights are materialised anyway) unless q_len × k_len is very large, then
       ``chunked`` (recomputes them tile by tile);
    2. a sliding window much narrower than the keys: ``chunked`` (skips the blocks outside the band);
    3. a dot-product score: ``fused`` (PyTorch SDPA), unless a mask/score function would need a large dense
       tensor or applies more than an additive term;
    4. anything else: ``reference`` for small inputs, ``chunked`` for long ones (it skips the tiles a mask function
       leaves empty).
    """
    area = call.q_len * call.k_len
    if call.return_weights:
        return "reference" if area <= MATERIALISE_LIMIT else "chunked"
    if _narrow_band(call) or _sparse_blocks(call):
        return "chunked"
    if fused_unsupported_reason(call) is None:
        return "fused"
    return "reference" if area <= (1 << 16) else "chunked"


def run_backend(name: str, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
    """Run ``call`` on backend ``name`` ("auto" chooses)."""
    chosen = name == "auto"  # the chooser only picks a backend that can run the call: no second check
    if chosen:
        name = choose_backend(call)
    backend = BACKENDS.get(name) if isinstance(name, str) else None
    if backend is None:
        raise UnknownNameError(f"unknown backend {name!r}; choose one of {', '.join(available_backends())}")
    if name in _UNSUPPORTED and not chosen:
        reason = _UNSUPPORTED[name](call)
        if reason is not None:
            raise BackendUnsupportedError(f"backend {name!r} cannot run this call: {reason}; use 'chunked' or 'auto'")
    return backend(call)
