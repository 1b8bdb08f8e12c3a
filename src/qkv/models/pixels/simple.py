"""The no-context baseline, the pixel RNN and MADE."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.frozen import derived
from qkv.models.pixels.base import (
    PixelConfig,
    PixelModel,
    SequencePixelModel,
    condition,
    label_embedding,
    pixel_log_probs,
)

__all__ = ["IndependentPixels", "MADE", "PixelRNN"]


class IndependentPixels(PixelModel):
    """Each pixel its own categorical distribution (per class when conditional), whatever the other pixels are: the
    reference an autoregressive model must beat."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.logits = nn.Parameter(torch.zeros(max(1, c.num_classes), c.height, c.width, c.levels))

    def embed(self, images: Tensor) -> Tensor:
        return self.as_float(images)[..., None]  # (unused by predict: no pixel sees another)

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:
        batch = features.shape[0]
        if self.config.num_classes and labels is not None:
            return self.logits[labels] + 0.0 * features.sum(dim=-1, keepdim=True)  # (keeps the graph for gradients)
        return self.logits[0].expand(batch, -1, -1, -1) + 0.0 * features.sum(dim=-1, keepdim=True)


class PixelRNN(SequencePixelModel):
    """A GRU or LSTM over the pixels in raster order: step d reads pixel d-1 (a start vector, the class embedding
    when conditional, at d = 0) and predicts pixel d; with ``positions``, the step also reads an embedding of where
    pixel d is (the texts' remedy for an RNN that loses track of the row it is in)."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__(config)
        c = config
        self.position = nn.Embedding(c.pixels, c.hidden) if c.positions else None
        rnn = nn.GRU if c.cell == "gru" else nn.LSTM
        dropout = c.dropout if c.layers > 1 else 0.0
        self.rnn = rnn(c.hidden, c.hidden, num_layers=c.layers, batch_first=True, dropout=dropout)
        self.out = nn.Linear(c.hidden, c.levels)
        self.dropout = nn.Dropout(c.dropout)

    def predict(self, features: Tensor, labels: Tensor | None) -> Tensor:
        c = self.config
        inputs = self.shifted(features, labels)  # (batch, pixels, hidden): step d reads pixel d - 1
        if self.position is not None:
            inputs = inputs + self.position.weight
        hidden, _ = self.rnn(self.dropout(inputs))
        return self.out(self.dropout(hidden)).view(features.shape[0], c.height, c.width, c.levels)


class MADE(PixelModel):
    """Masked Autoencoder for Distribution Estimation (Germain et al. 2015): a fully connected network whose weight
    masks let output d depend only on inputs that come before d in an ordering.

    Each input gets a degree (its place in the ordering, 1..D), each hidden unit a degree in [1, D-1]; a weight
    from a unit of degree m to a hidden unit of degree m' exists iff m' >= m, and to output d iff its degree m < d's.
    ``num_masks`` connectivity patterns (and with ``ordering = "random"`` orderings) are drawn from a seed; training
    cycles through them, and :meth:`log_prob` averages their probabilities (the ensemble the paper uses at test).
    """

    orders: Tensor  # (orders, pixels), a buffer

    def __init__(self, config: PixelConfig, seed: int = 0) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        d = c.pixels
        # binary pixels need one logit each (softmax over (0, z) is Bernoulli(sigmoid z)): half the output layer,
        # which holds most of MADE's weights and work
        self.logits_per_pixel = 1 if c.levels == 2 else c.levels
        self.input = nn.Linear(d, c.hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.layers - 1))
        self.output = nn.Linear(c.hidden, d * self.logits_per_pixel)
        self.direct = nn.Linear(d, d * self.logits_per_pixel, bias=False)  # input-to-output, masked like the output
        self.label = label_embedding(c, c.hidden)
        self.dropout = nn.Dropout(c.dropout)
        g = torch.Generator().manual_seed(seed)
        orders, masks = [], []
        for index in range(c.num_masks):
            order = torch.arange(d) if c.ordering == "raster" or index == 0 else torch.randperm(d, generator=g)
            degrees_in = torch.empty(d, dtype=torch.long)
            degrees_in[order] = torch.arange(1, d + 1)  # pixel order[k] is the (k+1)-th in the ordering
            degrees = [degrees_in]
            for _ in range(c.layers):
                low = int(degrees[-1].min()) if len(degrees) > 1 else 1
                degrees.append(torch.randint(low, max(d, low + 1), (c.hidden,), generator=g))
            masks.append(self._masks(degrees, self.logits_per_pixel))
            orders.append(order)
        # per mask: one (out, in) 0/1 matrix per layer, then output and direct masks
        for index, layer_masks in enumerate(masks):
            for k, mask in enumerate(layer_masks):
                self.register_buffer(f"mask_{index}_{k}", mask, persistent=False)
        self.register_buffer("orders", torch.stack(orders), persistent=False)
        self.active = 0  # which connectivity the forward uses; training cycles it

    @staticmethod
    def _masks(degrees: list[Tensor], logits_per_pixel: int) -> list[Tensor]:
        """Hidden masks ``m'(out) >= m(in)``, then the output mask ``d(out) > m(in)`` and the direct one
        ``d(out) > d(in)``, each output row repeated for the logits of its pixel."""
        hidden = [(after[:, None] >= before[None, :]).float() for before, after in zip(degrees[:-1], degrees[1:])]
        pixel_degree = degrees[0].repeat_interleave(logits_per_pixel)  # output d's logits share d's degree
        output = (pixel_degree[:, None] > degrees[-1][None, :]).float()
        direct = (pixel_degree[:, None] > degrees[0][None, :]).float()
        return [*hidden, output, direct]

    def mask(self, index: int, k: int) -> Tensor:
        return getattr(self, f"mask_{index}_{k}")

    def masked(self, weight: Tensor, index: int, k: int) -> Tensor:
        """``weight ∘ mask`` of connectivity ``index``, layer ``k``: made once per ``frozen_weights`` context
        (sampling runs one forward per pixel, 784 on MNIST, with the same weights), every call otherwise."""
        return derived(self, f"masked_{index}_{k}", lambda: weight * self.mask(index, k))

    def embed(self, images: Tensor) -> Tensor:
        return (self.as_float(images) / (self.config.levels - 1))[..., None]  # levels scaled to [0, 1]

    def predict(self, features: Tensor, labels: Tensor | None, mask: int | None = None) -> Tensor:
        c = self.config
        m = self.active if mask is None else mask
        x = features.reshape(features.shape[0], c.pixels)
        h = F.linear(x, self.masked(self.input.weight, m, 0), self.input.bias)
        h = self.dropout(F.relu(h + condition(self.label, labels, x.shape[0], c.hidden, h)))  # (label: before all)
        for k, layer in enumerate(cast(list[nn.Linear], self.hidden_layers), start=1):
            h = self.dropout(F.relu(F.linear(h, self.masked(layer.weight, m, k), layer.bias)))
        out = F.linear(h, self.masked(self.output.weight, m, c.layers), self.output.bias)
        out = out + F.linear(x, self.masked(self.direct.weight, m, c.layers + 1))
        out = out.view(x.shape[0], c.height, c.width, self.logits_per_pixel)
        return torch.cat([torch.zeros_like(out), out], dim=-1) if self.logits_per_pixel == 1 else out

    def forward(self, images: Tensor, labels: Tensor | None = None):  # noqa: ANN201
        output = super().forward(images, labels)
        if self.training:  # the next step trains the next connectivity
            self.active = (self.active + 1) % self.config.num_masks
        return output

    def log_prob(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """``log mean_m p_m(image)`` over the connectivity masks: an exact likelihood of the ensemble."""
        self.check_input(images, labels)
        features = self.embed(images)
        per_mask = [
            pixel_log_probs(self.predict(features, labels, mask=m), images) for m in range(self.config.num_masks)
        ]
        return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(len(per_mask))  # (masks, batch) -> (batch,)

    def sampling_order(self) -> list[int]:
        return self.orders[self.active].tolist()
