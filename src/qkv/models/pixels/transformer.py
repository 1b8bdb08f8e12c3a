"""A pixel Transformer: causal ``qkv.attend`` over the pixels in raster order (Image GPT on a small scale).

Position t of the sequence reads pixel t - 1 (a start vector, plus the class embedding, at t = 0) and the 2-D
position (row and column embeddings) of pixel t, and predicts pixel t. With ``window = r`` each pixel attends only
to pixels at most r rows up and r columns to either side (and the start vector): a local 2-D neighbourhood, the
receptive field of a convolution, written as a mask function. Sampling runs on a KV cache, one pixel per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.attention.kv_cache import KVCache
from qkv.models.blocks import PreNormBlock, make_norm
from qkv.models.pixels.base import PixelConfig, SequencePixelModel

__all__ = ["PixelTransformer"]


class PixelTransformer(SequencePixelModel):
    """A causal Transformer over the pixels of an image in raster order, with row and column embeddings;
    ``window = r`` restricts attention to a 2-D neighbourhood (a mask function). Samples on its KV cache.
    """

    def __init__(self, config: PixelConfig) -> None:
        super().__init__(config)
        c = config
        self.row = nn.Embedding(c.height, c.hidden)
        self.column = nn.Embedding(c.width, c.hidden)
        self.blocks = nn.ModuleList(
            PreNormBlock(c.hidden, c.num_heads, None, 4 * c.hidden, dropout=c.dropout, backend=c.backend)
            for _ in range(c.layers)
        )
        self.final_norm = make_norm("layer", c.hidden, 1e-5, True)
        self.out = nn.Linear(c.hidden, c.levels)
        nn.init.normal_(self.token.weight, std=0.02)
        for table in (self.row, self.column):
            nn.init.normal_(table.weight, std=0.02)

    def positions(self, start: int, length: int, device: torch.device) -> Tensor:
        """``(length, hidden)`` 2-D position embeddings of pixels ``start .. start + length - 1``."""
        index = torch.arange(start, start + length, device=device)
        return self.row(index // self.config.width) + self.column(index % self.config.width)

    def window_mod(self):  # noqa: ANN201
        """The 2-D neighbourhood as a mask function over sequence positions (query t predicts pixel t; key s
        carries pixel s - 1, key 0 the start vector, always visible); None without a window."""
        r, width = self.config.window, self.config.width
        if not r:
            return None

        def neighbourhood(_b, _h, q_idx, kv_idx):  # noqa: ANN001, ANN202
            pixel = kv_idx - 1
            near = ((q_idx // width - pixel // width) <= r) & ((q_idx % width - pixel % width).abs() <= r)
            return (kv_idx == 0) | near

        return neighbourhood

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:
        c = self.config
        x = self.shifted(features, labels) + self.positions(0, c.pixels, features.device)
        return self._run(x, None).view(features.shape[0], c.height, c.width, c.levels)

    def _run(self, x: Tensor, cache: KVCache | None, return_attention: bool = False):  # noqa: ANN202
        mask_mod = self.window_mod()
        attentions = []
        for index, block in enumerate(self.blocks):
            x, weights = block(x, cache=cache, layer_idx=index, mask_mod=mask_mod, return_weights=return_attention)
            attentions.append(weights)
        logits = self.out(self.final_norm(x))
        return (logits, attentions) if return_attention else logits

    def new_cache(self, batch_size: int) -> KVCache:
        c = self.config
        param = next(self.parameters())
        return KVCache(
            c.layers, batch_size, c.num_heads, c.pixels, c.hidden // c.num_heads, dtype=param.dtype, device=param.device
        )

    @torch.no_grad()
    def attention(self, images: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """Per layer, the attention weights ``(batch, heads, pixels, pixels)``: row t (predicting pixel t) over
        keys s (key s holds pixel s - 1; key 0 the start)."""
        self.check_input(images, labels)
        x = self.shifted(self.embed(images), labels) + self.positions(0, self.config.pixels, images.device)
        return self._run(x, None, return_attention=True)[1]

    @torch.no_grad()
    def sample_cached(
        self, labels: Tensor | None, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """``n`` images ``(n, H, W)``, one pixel per step on a KV cache (each step attends to the cached keys);
        :func:`qkv.decoding.images.sample_images` checks the arguments."""
        c = self.config
        device = self.start.device
        cache = self.new_cache(n)
        x = self.first_input(labels, n)[:, None]
        pixels = torch.empty(n, c.pixels, dtype=torch.long, device=device)
        for t in range(c.pixels):
            logits = self._run(x + self.positions(t, 1, device), cache)[:, -1].float() / temperature
            pixels[:, t] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            x = self.token(pixels[:, t : t + 1])
        return pixels.view(n, c.height, c.width)
