"""A key/value cache with preallocated buffers, for step-by-step decoding.

Each layer appends the keys and values of its new positions and attends over everything cached so far; buffers are
allocated once, so a decoding step does no reallocation and no concatenation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.attention.memory import check_fits
from qkv.errors import ConfigError, ShapeError, describe_shape

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of ``num_layers`` layers: buffers ``(num_layers, batch, kv_heads, max_seq_len, head_dim)``."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        v_dim: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("batch_size", batch_size),
            ("num_kv_heads", num_kv_heads),
            ("max_seq_len", max_seq_len),
            ("head_dim", head_dim),
        ):
            if value < 1:
                raise ConfigError(f"KVCache needs {name} >= 1, got {value}")
        v_dim = head_dim if v_dim is None else v_dim
        shape = (num_layers, batch_size, num_kv_heads, max_seq_len)
        itemsize = torch.empty((), dtype=dtype).element_size()
        check_fits(
            num_layers * batch_size * num_kv_heads * max_seq_len * (head_dim + v_dim) * itemsize,
            f"a KV cache for {batch_size} sequences of up to {max_seq_len} positions",
            "decode fewer sequences at once (fewer beams, a smaller batch)",
            device,
        )
        # empty, not zeros: only the filled positions are ever read (zeroing a GPT-2-sized cache is ~3% of a decode)
        self._bind(
            torch.empty(*shape, head_dim, dtype=dtype, device=device),
            torch.empty(*shape, v_dim, dtype=dtype, device=device),
        )
        self.lengths = [0] * num_layers
        self.max_seq_len = max_seq_len
        self._spare: tuple[Tensor, Tensor] | None = None  # reorder's second pair of buffers, made on first use

    def _bind(self, keys: Tensor, values: Tensor) -> None:
        """Make ``keys``/``values`` the buffers, with each layer's views ``(batch, kv_heads, max_seq_len, dim)`` made
        once: taking them on every update was two ops per layer and token of a decoding step."""
        self.keys, self.values = keys, values
        self._layers = [(keys.select(0, i), values.select(0, i)) for i in range(keys.shape[0])]

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def seq_len(self, layer: int = 0) -> int:
        """How many positions layer ``layer`` holds."""
        return self.lengths[layer]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k (batch, kv_heads, n, head_dim)`` and ``v`` to layer ``layer``; return all cached keys/values.

        The returned tensors are views ``(batch, kv_heads, seq_len, dim)`` into the buffers.
        """
        if not 0 <= layer < len(self._layers):
            raise ConfigError(f"layer {layer} is outside this cache's {self.num_layers} layers")
        # the kept views, where autograd is off (decoding); with it on, fresh ones: autograd refuses in-place writes
        # into a view made under another grad mode
        keys, values = self._layers[layer] if not torch.is_grad_enabled() else (self.keys[layer], self.values[layer])
        batch, heads, _, dim = keys.shape
        if (
            k.dim() != 4
            or v.dim() != 4
            or (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, dim)
            or v.shape[:3] != k.shape[:3]
            or v.shape[3] != values.shape[3]
        ):
            raise ShapeError(
                f"KVCache holds (batch={batch}, kv_heads={heads}, seq, head_dim={dim}); "
                f"got k {describe_shape(k.shape)} and v {describe_shape(v.shape)}"
            )
        start = self.lengths[layer]
        end = start + k.shape[2]
        if end > self.max_seq_len:
            raise ConfigError(
                f"KVCache is full: it holds at most max_seq_len={self.max_seq_len} positions and would hold {end}; "
                "make a larger cache or stop generating earlier"
            )
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        self.lengths[layer] = end
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def reorder(self, batch_indices: Tensor) -> None:
        """Keep batch rows ``batch_indices`` (e.g. the beams that survived a beam-search step), in that order.

        Nothing is allocated after the first call: the filled positions are gathered into a second pair of buffers
        of the same size, which then become the cache (a beam search reorders at every step)."""
        if batch_indices.shape != (self.batch_size,):
            raise ShapeError(
                f"reorder needs one index per batch row ({self.batch_size}), got {tuple(batch_indices.shape)}"
            )
        if torch.is_grad_enabled() and (self.keys.requires_grad or self.values.requires_grad):
            # decoding under autograd (rare: e.g. a gradient through a beam search): gather out of place
            self._bind(self.keys.index_select(1, batch_indices), self.values.index_select(1, batch_indices))
            return
        if self._spare is None:
            self._spare = (torch.empty_like(self.keys), torch.empty_like(self.values))
        filled = max(self.lengths)
        spare_keys, spare_values = self._spare
        torch.index_select(self.keys[:, :, :, :filled], 1, batch_indices, out=spare_keys[:, :, :, :filled])
        torch.index_select(self.values[:, :, :, :filled], 1, batch_indices, out=spare_values[:, :, :, :filled])
        self._spare = (self.keys, self.values)
        self._bind(spare_keys, spare_values)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on, in every layer (speculative decoding drops rejected tokens)."""
        if length < 0:
            raise ConfigError(f"KVCache.truncate needs a length >= 0, got {length}")
        self.lengths = [min(n, length) for n in self.lengths]

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept)."""
        self.lengths = [0] * self.num_layers
