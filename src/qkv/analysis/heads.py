"""Scores per attention head for the pattern it implements (previous-token and induction heads, Olsson et al.
2022), and the logit lens. Each returns ``(layers, heads)``, layers counted as
:func:`qkv.visualization.attention_modules` counts them."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from qkv.attention.hooks import record
from qkv.attention.multi_head import named_attention_modules
from qkv.errors import ConfigError
from qkv.models.blocks import RMSNorm
from qkv.models.gpt import GPT
from qkv.visualization.capture import capture_attention

__all__ = [
    "direct_logit_attribution",
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


def _causal_lm(model: nn.Module, what: str) -> GPT:
    """``model`` as the GPT-shaped causal LM it must be here (a final norm and an output layer)."""
    if not (hasattr(model, "final_norm") and hasattr(model, "lm_head")):
        raise ConfigError(f"{what} needs a causal LM with final_norm and lm_head; {type(model).__name__} has not")
    return cast(GPT, model)


@torch.no_grad()
def logit_lens(model: nn.Module, ids: Tensor) -> Tensor:
    """The next-token logits each layer's residual stream would give if it were the last (nostalgebraist 2020):
    ``(layers, batch, seq, vocab)``, every layer's output through the model's final norm and output layer; the last
    row is the model's own logits."""
    lm = _causal_lm(model, "the logit lens")
    with record(model, names=lambda name: name.endswith("hook_resid_post")) as cache:
        model(ids)
    return torch.stack([lm.lm_head(lm.final_norm(resid)) for resid in cache.values()])  # (in layer order)


@torch.no_grad()
def direct_logit_attribution(model: nn.Module, ids: Tensor, targets: Tensor | None = None) -> Tensor:
    """How much each head's output, written straight into the residual stream, adds to the logit of a target token:
    ``(layers, heads, batch, positions)``.

    A head's direct contribution is its output through its slice of W_O, ``(batch, seq, embed_dim)``; the final
    norm is linearised at the actual final residual (its centring and its scale ``1/σ`` or ``1/rms`` taken from
    that residual, as TransformerLens does), then multiplied by the target's row of the output layer. Paths through
    later layers are not counted (that is what ablation measures).

    Args:
        ids: ``(batch, seq)``.
        targets: ``(batch, seq)`` the token whose logit to explain at each position; default: the next token
            (``ids[:, 1:]``, so the result covers the first ``seq - 1`` positions).
    """
    lm = _causal_lm(model, "direct logit attribution")
    if targets is None:
        if ids.shape[1] < 2:
            raise ConfigError("direct logit attribution of the next token needs sequences of at least 2 tokens")
        targets = ids[:, 1:]
    positions = targets.shape[1]
    if targets.shape[0] != ids.shape[0] or positions > ids.shape[1]:
        raise ConfigError(f"targets must be (batch, at most seq) = ({ids.shape[0]}, <= {ids.shape[1]}), got "
                          f"{tuple(targets.shape)}")  # fmt: skip
    final: dict[str, Tensor] = {}
    handle = lm.final_norm.register_forward_pre_hook(lambda _m, args: final.__setitem__("resid", args[0]))
    named = named_attention_modules(model)
    try:
        with record(model, names=[f"{name}.hook_z" for name, _ in named]) as cache:
            model(ids)
    finally:
        handle.remove()
    norm = cast(nn.LayerNorm | RMSNorm, lm.final_norm)
    dtype = torch.promote_types(final["resid"].dtype, torch.float32)  # (half precision: attribute in fp32)
    resid = final["resid"][:, :positions].to(dtype)
    layer_norm = isinstance(norm, nn.LayerNorm)
    if layer_norm:
        scale = (resid.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).rsqrt()
    else:  # RMSNorm
        scale = (resid.pow(2).mean(dim=-1, keepdim=True) + norm.eps).rsqrt()
    # the target's direction in the residual stream, through the norm's gain: (batch, positions, embed_dim)
    direction = lm.lm_head.weight[targets].to(dtype) * norm.weight.to(dtype) * scale
    out = torch.zeros(len(named), max(m.num_heads for _, m in named), *targets.shape, dtype=dtype)
    for layer, (name, module) in enumerate(named):
        heads = cache[f"{name}.hook_z"][:, :, :positions].to(dtype)  # (batch, heads, positions, head_dim)
        w_o = module.out_proj.weight.to(dtype).view(module.embed_dim, module.num_heads, -1)  # (embed, heads, head_dim)
        written = torch.einsum("bhpd,ehd->bhpe", heads, w_o)  # each head's write into the residual stream
        if layer_norm:
            written = written - written.mean(dim=-1, keepdim=True)
        out[layer, : module.num_heads] = torch.einsum("bhpe,bpe->hbp", written, direction)
    return out
