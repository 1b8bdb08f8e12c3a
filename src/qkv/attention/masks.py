"""Masks: which key each query may attend to.

One convention everywhere in qkv: a boolean mask, **True = may attend**, broadcastable to
``(batch, heads, q_len, k_len)``. Structural masks (causal, local window) are described by a :class:`Span` so the
chunked backend can skip whole blocks without materialising anything; :meth:`Span.dense` builds the bool matrix
when a backend needs one. The ``*_tensor`` functions build mask tensors; mask *functions* (of indices, for
``mask_mod=``) live in :mod:`qkv.attention.mods`.

Alignment: query ``i`` sits at absolute position ``i + off`` with ``off = k_len - q_len``, i.e. queries are the
*last* ``q_len`` positions of the keys. That is what a KV cache needs (one new query against all cached keys).

**Windows** (the one convention, everywhere in qkv: ``qkv.attend(window=)``, :func:`qkv.attention.mods.sliding_window`,
``GPTConfig.sliding_window``, :func:`window_mask_tensor`): an int ``w`` is *the number of keys a query sees*, itself
included and counting back: keys ``t - w + 1 .. t`` for the query at position ``t`` (Mistral's ``sliding_window``;
it implies looking back only, with or without ``causal``). A tuple ``(left, right)`` counts the keys a query sees
on each side besides itself: keys ``t - left .. t + right`` (``(w, w)`` is a symmetric window of ``2w + 1`` keys);
``causal=True`` then drops the right side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import ConfigError, DTypeError, ShapeError, describe_shape

__all__ = [
    "Span",
    "Window",
    "causal_mask_tensor",
    "combine_mask_tensors",
    "make_span",
    "padding_mask_tensor",
    "window_mask_tensor",
    "window_bounds",
]

#: a window: an int (keys a query sees, counting back from itself) or ``(left, right)`` keys on each side
Window = int | tuple[int, int]


@dataclass(frozen=True)
class Span:
    """Query at absolute position ``t`` may attend key ``j`` iff ``t - left <= j <= t + right``.

    ``None`` means unbounded on that side. ``Span(None, None)`` allows everything; causal is ``Span(None, 0)``.
    """

    left: int | None = None
    right: int | None = None

    @property
    def unbounded(self) -> bool:
        return self.left is None and self.right is None

    def simplify(self, q_len: int, k_len: int) -> Span:
        """The same span with sides that exclude nothing at these lengths dropped.

        ``j - off - i`` ranges over ``[-(k_len - 1), q_len - 1]``; a bound outside that range never masks anything.
        One decoding step (``q_len = 1``) under ``causal=True`` therefore needs no mask at all.
        """
        left = None if self.left is not None and self.left >= k_len - 1 else self.left
        right = None if self.right is not None and self.right >= q_len - 1 else self.right
        return Span(left, right)

    def dense(self, q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor | None:
        """The bool mask ``(q_len, k_len)`` of this span, or None when it allows everything."""
        if self.unbounded:
            return None
        return self.block(q_len, k_len, (0, q_len), (0, k_len), device)

    def block(
        self,
        q_len: int,
        k_len: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The bool mask of queries ``[rows)`` x keys ``[cols)`` of a ``(q_len, k_len)`` attention."""
        off = k_len - q_len
        t = torch.arange(rows[0] + off, rows[1] + off, device=device).unsqueeze(1)  # absolute query positions
        j = torch.arange(cols[0], cols[1], device=device).unsqueeze(0)
        allowed = torch.ones(t.shape[0], j.shape[1], dtype=torch.bool, device=device)
        if self.left is not None:
            allowed &= j >= t - self.left
        if self.right is not None:
            allowed &= j <= t + self.right
        return allowed


def window_bounds(window: Window) -> tuple[int, int]:
    """A window (see the module's docstring) as ``(left, right)``: keys ``t - left .. t + right`` are seen."""
    if isinstance(window, bool) or not isinstance(window, (int, tuple, list)):
        raise ConfigError(
            f"window must be an int >= 1 (keys a query sees, itself included) or a (left, right) tuple of ints >= 0, "
            f"got {window!r}"
        )
    if isinstance(window, int):
        if window < 1:
            raise ConfigError(f"window must be >= 1 (the number of keys a query sees, itself included), got {window}")
        return window - 1, 0
    if len(window) != 2 or not all(isinstance(w, int) and not isinstance(w, bool) for w in window):
        raise ConfigError(f"window as a tuple must be (left, right) with two ints, got {window!r}")
    left, right = window
    if left < 0 or right < 0:
        raise ConfigError(f"window sizes must be >= 0 (how many keys to each side a query sees), got {window!r}")
    return left, right


def make_span(causal: bool, window: Window | None) -> Span:
    """Validate ``causal``/``window`` as :func:`qkv.attend` takes them and turn them into a :class:`Span`."""
    if not isinstance(causal, bool):
        raise ConfigError(f"causal must be True or False, got {causal!r}")
    if window is None:
        return Span(None, 0 if causal else None)
    left, right = window_bounds(window)
    return Span(left, 0 if causal else right)


def causal_mask_tensor(q_len: int, k_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Lower-triangular bool mask ``(q_len, k_len)`` aligned to the end of the keys (True = may attend)."""
    k_len = q_len if k_len is None else k_len
    if k_len < q_len:
        raise ShapeError(f"a causal mask needs k_len >= q_len (queries are the last positions), got {q_len} > {k_len}")
    mask = Span(None, 0).dense(q_len, k_len, device)
    assert mask is not None
    return mask


def window_mask_tensor(
    q_len: int,
    window: Window,
    k_len: int | None = None,
    *,
    causal: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sliding-window bool mask ``(q_len, k_len)``: what ``qkv.attend(window=window, causal=causal)`` allows (the
    window convention of the module's docstring)."""
    k_len = q_len if k_len is None else k_len
    mask = make_span(causal, window).dense(q_len, k_len, device)
    assert mask is not None
    return mask


def padding_mask_tensor(lengths: Tensor | list[int], max_len: int | None = None) -> Tensor:
    """Key-padding mask ``(batch, 1, 1, max_len)``: True for the first ``lengths[b]`` positions of each sequence."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ShapeError(f"lengths must be a 1-D integer tensor (one length per sequence), got {lengths!r}")
    if (lengths < 0).any():
        raise ConfigError(f"lengths must be >= 0, got {lengths.tolist()}")
    max_len = int(lengths.max()) if max_len is None and lengths.numel() else (max_len or 0)
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ConfigError(f"a length {int(lengths.max())} exceeds max_len={max_len}")
    positions = torch.arange(max_len, device=lengths.device)
    return (positions.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]


def combine_mask_tensors(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of masks (None entries are ignored); None when all are None."""
    out: Tensor | None = None
    for m in masks:
        if m is None:
            continue
        if m.dtype != torch.bool:
            raise DTypeError(f"masks must be bool (True = may attend), got dtype {m.dtype}")
        out = m if out is None else out & m
    return out


def check_broadcastable(name: str, t: Tensor, target: tuple[int, int, int, int]) -> None:
    """Raise unless ``t`` broadcasts to ``target`` = (batch, heads, q_len, k_len)."""
    ok = t.dim() <= 4 and all(s in (1, n) for s, n in zip(reversed(t.shape), reversed(target)))
    if not ok:
        raise ShapeError(
            f"{name} of shape {describe_shape(t.shape)} does not broadcast to (batch, heads, q_len, k_len) = "
            f"{describe_shape(target)}; each of its last dims must be 1 or match "
            "(e.g. (batch, 1, 1, k_len) for padding)"
        )
