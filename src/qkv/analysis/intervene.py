"""``qkv.intervene``: ablate attention heads of any qkv model while it runs, exactly, on its fast backend.

A head's output is what it contributes before the output projection W_O: ``softmax(...) · V`` for that head,
``(batch, q_len, head_dim)``. Zero-ablation replaces it with zeros; mean-ablation with its mean over the batch and
the positions of the same forward pass (a reference input's mean: run it first and pass ``means=``). The model's
backend is untouched: the hook acts on the heads' outputs, after attention.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

from qkv.errors import ConfigError
from qkv.visualization.capture import attention_modules

__all__ = ["ABLATIONS", "intervene"]

ABLATIONS = ("zero", "mean")


def _ablation_hook(heads: dict[int, str], means: Mapping[int, Tensor]):  # noqa: ANN202
    def hook(out: Tensor) -> Tensor:  # (batch, heads, q_len, head_dim)
        out = out.clone()
        for head, kind in heads.items():
            if kind == "zero":
                out[:, head] = 0.0
            else:
                mean = means[head] if head in means else out[:, head].mean(dim=(0, 1))
                out[:, head] = mean.to(out.dtype)
        return out

    return hook


@contextmanager
def intervene(
    model: nn.Module,
    ablate: Mapping[tuple[int, int], str] | None = None,
    means: Mapping[tuple[int, int], Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Inside, the listed heads of ``model`` are ablated.

    Args:
        ablate: ``{(layer, head): "zero" | "mean"}``; ``layer`` counts the model's attention modules in order
            (``qkv.visualization.attention_modules``: for GPT and BERT, the layers; an encoder-decoder lists its
            encoder's self-attention, then per decoder layer self- and cross-attention).
        means: ``{(layer, head): (head_dim,)}`` for ``"mean"``: a reference mean (default: the mean of the current
            forward pass over batch and positions).

    Yields the model. Hooks set before (by another ``intervene``) are restored on exit.
    """
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no qkv MultiHeadAttention modules to intervene on")
    per_layer: dict[int, dict[int, str]] = {}
    for key, kind in (ablate or {}).items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ConfigError(f"ablate keys are (layer, head) pairs, got {key!r}")
        layer, head = key
        if not 0 <= layer < len(modules):
            raise ConfigError(f"layer {layer} does not exist: the model has {len(modules)} attention modules")
        if not 0 <= head < modules[layer].num_heads:
            raise ConfigError(f"head {head} does not exist: layer {layer} has {modules[layer].num_heads} heads")
        if kind not in ABLATIONS:
            raise ConfigError(f"unknown ablation {kind!r} for {key}; choose one of {', '.join(ABLATIONS)}")
        per_layer.setdefault(layer, {})[head] = kind
    previous = {layer: modules[layer].head_hook for layer in per_layer}
    for layer, heads in per_layer.items():
        layer_means = {h: m for (lay, h), m in (means or {}).items() if lay == layer}
        modules[layer].head_hook = _ablation_hook(heads, layer_means)
    try:
        yield model
    finally:
        for layer, hook in previous.items():
            modules[layer].head_hook = hook
