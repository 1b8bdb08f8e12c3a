"""PixelSNAIL (Chen et al. 2018): causal convolutions interleaved with causal self-attention over every previous
pixel.

The text's point, made runnable: a convolution is *local* attention (each pixel reads a fixed neighbourhood above
and to its left), self-attention is *global* (each pixel reads every pixel before it, with weights it computes).
Here the convolutions are Gated PixelCNN's vertical and horizontal stacks (no blind spot); after every
``attention_every`` gated layers, the horizontal stream gets a residual attention block: ``qkv.attend`` through
:class:`~qkv.attention.MultiHeadAttention` over the pixels in raster order, with learned row and column embeddings
(PixelSNAIL's "background"). As in PixelSNAIL, the keys and values also read each pixel's own value, and the mask
function lets pixel ``i`` attend to keys ``j < i`` only (strictly earlier in raster order): so every earlier pixel,
the one just before the end of the row above included, reaches pixel ``i`` in one step, and pixel ``i`` itself never
does (the first pixel attends to nothing; qkv's softmax gives it zero weights, not NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.attention import MultiHeadAttention, mods
from qkv.models.pixels.base import PixelConfig
from qkv.models.pixels.convolutional import GatedPixelCNN

__all__ = ["PixelSNAIL"]


#: the mask function of raster order, strict: query pixel ``q_idx`` sees key pixels ``kv_idx < q_idx`` (qkv's own,
#: which the fused backend runs on SDPA's causal kernel instead of a dense 784 x 784 mask)
strictly_before = mods.causal(strict=True)


class AttentionBlock(nn.Module):
    """``h + attention(query = norm(h) + positions; keys, values = norm(h) + positions + the pixel's value)`` over
    the ``H·W`` pixels in raster order, each query reading the pixels strictly before it."""

    def __init__(self, c: PixelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c.hidden)
        self.row, self.column = nn.Embedding(c.height, c.hidden), nn.Embedding(c.width, c.hidden)
        self.pixel = nn.Linear(1, c.hidden)  # the key's own pixel value (scaled levels), which its stream lacks
        self.attn = MultiHeadAttention(c.hidden, c.num_heads, dropout=c.dropout, backend=c.backend)
        for table in (self.row, self.column):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, h: Tensor, pixels: Tensor) -> Tensor:
        """``h (batch, C, H, W)`` and the scaled input ``pixels (batch, H, W, 1)`` -> ``h`` with what every earlier
        pixel sent added."""
        batch, channels, height, width = h.shape
        x = self.norm(h.flatten(2).transpose(1, 2))  # (batch, H·W, C), raster order
        rows = torch.arange(height, device=h.device)
        columns = torch.arange(width, device=h.device)
        background = (self.row(rows)[:, None] + self.column(columns)[None]).reshape(height * width, channels)
        query = x + background
        keys = query + self.pixel(pixels.reshape(batch, height * width, 1).to(x.dtype))
        attended, _ = self.attn(query, keys, mask_mod=strictly_before)
        return h + attended.transpose(1, 2).reshape(batch, channels, height, width)

    def new_cache(self, n: int, pixels: int) -> dict[str, Tensor]:
        """Keys and values ``(n, kv_heads, pixels, head_dim)`` of the pixels sampled so far, and the pending
        query of the pixel being sampled (its key once its value is known)."""
        param = self.norm.weight
        shape = (n, self.attn.num_kv_heads, pixels, self.attn.head_dim)
        zeros = torch.zeros(shape, device=param.device, dtype=param.dtype)
        return {"keys": zeros, "values": zeros.clone(), "query": torch.zeros(0)}

    def step(self, h: Tensor, pixel: int, cache: dict[str, Tensor]) -> Tensor:
        """:meth:`forward` for one pixel, ``h (n, C, 1, 1)``, over the cached keys of the pixels before it."""
        n, channels = h.shape[:2]
        row, column = divmod(pixel, self.column.num_embeddings)
        query = self.norm(h.reshape(n, 1, channels)) + (self.row.weight[row] + self.column.weight[column])
        cache["query"] = query
        # the first pixel attends to nothing: one key, masked, gives what the full forward's empty row gives
        known = max(pixel, 1)
        mask = None if pixel else torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=h.device)
        memory = (cache["keys"][:, :, :known], cache["values"][:, :, :known])
        attended, _ = self.attn(query, memory_kv=memory, mask=mask)
        return h + attended.reshape(n, channels, 1, 1)

    def remember(self, pixel: int, value: Tensor, cache: dict[str, Tensor]) -> None:
        """Pixel ``pixel``'s scaled level ``value (n, 1)`` is known: project its key and value once."""
        keys = cache["query"] + self.pixel(value[:, None].to(cache["query"].dtype))
        k, v = self.attn.project_memory(keys)
        cache["keys"][:, :, pixel] = k[:, :, 0]
        cache["values"][:, :, pixel] = v[:, :, 0]


class PixelSNAIL(GatedPixelCNN):
    """Gated PixelCNN's ``layers`` gated layers (no blind spot), an attention block over every earlier pixel after
    each ``attention_every`` of them (and after the last), then two 1×1 convolutions to the logits."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__(config)
        c = self.config
        after = [i for i in range(c.layers) if (i + 1) % c.attention_every == 0 or i == c.layers - 1]
        self.attention = nn.ModuleList(AttentionBlock(c) for _ in after)
        self.block_after = {layer: block for block, layer in enumerate(after)}  # gated layer -> attention block

    def after_layer(self, index: int, h: Tensor, features: Tensor) -> Tensor:
        """Global after local: every earlier pixel, once the convolutions have read the neighbourhood."""
        block = self.block_after.get(index)
        return h if block is None else self.attention[block](h, features)

    def step_state(self, n: int) -> list[dict[str, Tensor]]:
        return [block.new_cache(n, self.config.pixels) for block in self.attention]  # type: ignore[operator]  # (ModuleList of AttentionBlock)

    def after_layer_step(self, index: int, h: Tensor, pixel: int, state: list[dict[str, Tensor]]) -> Tensor:
        block = self.block_after.get(index)
        return h if block is None else self.attention[block].step(h, pixel, state[block])  # type: ignore[operator]  # (ModuleList of AttentionBlock)

    def remember_pixel(self, pixel: int, value: Tensor, state: list[dict[str, Tensor]]) -> None:
        for block, cache in zip(self.attention, state):
            block.remember(pixel, value, cache)  # type: ignore[operator]  # (ModuleList of AttentionBlock)
