"""Scores per attention head for the pattern it implements (previous-token and induction heads, Olsson et al.
2022), and the logit lens. Each returns ``(layers, heads)``, layers counted as
:func:`qkv.visualization.attention_modules` counts them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.errors import ConfigError
from qkv.visualization.capture import capture_attention

__all__ = [
    "induction_scores",
    "logit_lens",
    "previous_token_scores",
    "repeated_random_tokens",
]


def repeated_random_tokens(vocab_size: int, half: int, batch: int = 8, seed: int = 0) -> Tensor:
    """``(batch, 2 · half)``: random tokens, then the same tokens again (the induction-head probe)."""
    first = torch.randint(0, vocab_size, (batch, half), generator=torch.Generator().manual_seed(seed))
    return torch.cat([first, first], dim=1)


def _weights(model: nn.Module, ids: Tensor) -> Tensor:
    """Captured weights ``(layers, batch, heads, seq, seq)`` of one forward pass."""
    with torch.no_grad(), capture_attention(model) as capture:
        model(ids)
    return torch.stack(capture.all_layers())


def previous_token_scores(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean attention weight from each position to the one before it, ``(layers, heads)``."""
    if ids.shape[1] < 2:
        raise ConfigError("previous-token scores need sequences of at least 2 tokens")
    w = _weights(model, ids)
    return w.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, 3)).double()


def induction_scores(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean attention weight from position ``half + i`` of a repeated sequence (``ids = [r, r]``, see
    :func:`repeated_random_tokens`) to position ``i + 1``: the token that followed the current one last time."""
    seq = ids.shape[1]
    if seq % 2 or seq < 4 or not torch.equal(ids[:, : seq // 2], ids[:, seq // 2 :]):
        raise ConfigError("induction scores need ids made of a sequence repeated twice (repeated_random_tokens)")
    half = seq // 2
    w = _weights(model, ids)
    # the diagonal key - query = 1 - half starts at query half - 1 (still the first half): skip that one
    return w.diagonal(offset=1 - half, dim1=-2, dim2=-1)[..., 1:].mean(dim=(1, 3)).double()


@torch.no_grad()
def logit_lens(model: nn.Module, ids: Tensor) -> Tensor:
    """The next-token logits each layer's residual stream would give if it were the last (nostalgebraist 2020):
    ``(layers, batch, seq, vocab)``, every layer's output through the model's final norm and output layer; the last
    row is the model's own logits."""
    from qkv.analysis.intervene import record

    if not (hasattr(model, "final_norm") and hasattr(model, "lm_head")):
        raise ConfigError(
            f"the logit lens needs a causal LM with final_norm and lm_head; {type(model).__name__} has not"
        )
    with record(model) as cache:
        model(ids)
    return torch.stack([model.lm_head(model.final_norm(cache.resid[i])) for i in sorted(cache.resid)])
