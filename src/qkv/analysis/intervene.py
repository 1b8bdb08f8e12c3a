"""``qkv.intervene``: ablate attention heads of any qkv model while it runs, exactly, on its fast backend.

A head's output is what it contributes before the output projection W_O: ``softmax(...) · V`` for that head,
``(batch, q_len, head_dim)``. Zero-ablation replaces it with zeros; mean-ablation with its mean over the batch and
the positions of the same forward pass (a reference input's mean: run it first and pass ``means=``). The model's
backend is untouched: the hook acts on the heads' outputs, after attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from qkv.errors import ConfigError
from qkv.visualization.capture import attention_modules

__all__ = ["ABLATIONS", "ActivationCache", "head_hooks", "intervene", "layer_modules", "record"]

ABLATIONS = ("zero", "mean")


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The module around each attention module (GPT's and Llama's blocks, BERT's layers): its output is the
    residual stream after that layer."""
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    return [parents[id(attn)] for attn in attention_modules(model)]


def _stream(output: Any) -> Tensor:  # noqa: ANN401
    return output[0] if isinstance(output, tuple) else output


@dataclass
class ActivationCache:
    """What :func:`record` saw: per attention module ``heads[layer]`` ``(batch, heads, q_len, head_dim)`` (each
    head's output before W_O) and ``resid[layer]`` ``(batch, seq, embed_dim)`` (the residual stream after it)."""

    heads: dict[int, Tensor] = field(default_factory=dict)
    resid: dict[int, Tensor] = field(default_factory=dict)


@contextmanager
def record(model: nn.Module) -> Iterator[ActivationCache]:
    """Record every head's output and every layer's residual stream of the next forward pass (a clean run to
    patch from). One forward pass: a second one overwrites."""
    cache = ActivationCache()
    modules, layers = attention_modules(model), layer_modules(model)
    handles = [
        layer.register_forward_hook(lambda _m, _a, out, i=index: _keep(cache, i, out))
        for index, layer in enumerate(layers)
        if index == 0 or layer is not layers[index - 1]  # (a decoder layer holds two attention modules)
    ]
    try:
        with head_hooks({attn: _recorder(cache, index) for index, attn in enumerate(modules)}):
            yield cache
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def head_hooks(hooks: Mapping[nn.Module, Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Inside, each attention module's head hook runs ``hooks[module]`` on the heads' outputs ``(batch, heads,
    q_len, head_dim)`` after the hook it already had (an outer intervention's); those are restored on exit."""
    previous = {module: module.head_hook for module in hooks}
    for module, hook in hooks.items():
        module.head_hook = _chain(previous[module], hook)
    try:
        yield
    finally:
        for module, hook in previous.items():
            module.head_hook = hook


def _recorder(cache: ActivationCache, index: int):  # noqa: ANN202
    def hook(out: Tensor) -> Tensor:
        cache.heads[index] = out.detach()
        return out

    return hook


def _keep(cache: ActivationCache, index: int, output: Any) -> None:  # noqa: ANN401
    cache.resid[index] = _stream(output).detach()


def _chain(first: Any, second: Any) -> Any:  # noqa: ANN401
    """A head hook running ``first`` (an outer intervention, if any) and then ``second``."""
    return second if first is None else (lambda out: second(first(out)))


def head_means(out: Tensor, token_mask: Tensor | None = None) -> Tensor:
    """Each head's mean output ``(heads, head_dim)`` over the batch and positions of ``out (batch, heads, q_len,
    head_dim)``: over the real tokens only when ``token_mask (batch, q_len)`` (1 = a real token, as BERT's
    ``attention_mask``) is given, so padding never pulls the mean (as nnsight's examples average)."""
    if token_mask is None:
        return out.mean(dim=(0, 2))
    if token_mask.shape != (out.shape[0], out.shape[2]):
        raise ConfigError(
            f"token_mask must be (batch, q_len) = ({out.shape[0]}, {out.shape[2]}) for this attention module, got "
            f"{tuple(token_mask.shape)}"
        )
    weights = token_mask.to(out.dtype)[:, None, :, None]  # (batch, 1, q_len, 1)
    return (out * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2)).clamp_min(1)


def _head_hook(  # noqa: ANN202
    heads: dict[int, str], means: Mapping[int, Tensor], patches: Mapping[int, Tensor], token_mask: Tensor | None
):
    def hook(out: Tensor) -> Tensor:  # (batch, heads, q_len, head_dim)
        current = head_means(out, token_mask) if any(kind == "mean" for kind in heads.values()) else None
        out = out.clone()
        for head, kind in heads.items():
            if kind == "zero":
                out[:, head] = 0.0
            else:
                mean = means[head] if head in means else current[head]  # type: ignore[index]
                out[:, head] = mean.to(out.dtype)
        for head, value in patches.items():
            if value.shape != out[:, head].shape:
                raise ConfigError(
                    f"a patch for head {head} must be (batch, q_len, head_dim) = {tuple(out[:, head].shape)}, got "
                    f"{tuple(value.shape)}"
                )
            out[:, head] = value.to(out.dtype)
        return out

    return hook


def _resid_hook(value: Tensor, layer: int):  # noqa: ANN202
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:  # noqa: ANN401
        stream = _stream(output)
        if value.shape != stream.shape:
            raise ConfigError(f"a patch for the residual after layer {layer} must be {tuple(stream.shape)}, got "
                              f"{tuple(value.shape)}")  # fmt: skip
        patched = value.to(stream.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched

    return hook


@contextmanager
def intervene(
    model: nn.Module,
    ablate: Mapping[tuple[int, int], str] | None = None,
    means: Mapping[tuple[int, int], Tensor] | None = None,
    patch: Mapping[tuple, Tensor] | None = None,
    token_mask: Tensor | None = None,
) -> Iterator[nn.Module]:
    """Inside, the listed heads of ``model`` are ablated.

    Args:
        ablate: ``{(layer, head): "zero" | "mean"}``; ``layer`` counts the model's attention modules in order
            (``qkv.visualization.attention_modules``: for GPT and BERT, the layers; an encoder-decoder lists its
            encoder's self-attention, then per decoder layer self- and cross-attention).
        means: ``{(layer, head): (head_dim,)}`` for ``"mean"``: a reference mean (default: the mean of the current
            forward pass over batch and positions).
        token_mask: ``(batch, seq)``, 1 = a real token (BERT's ``attention_mask``): the current forward's
            ``"mean"`` averages over the real tokens only, never over padding.
        patch: activation patching from a :func:`record`-ed run: ``{("head", layer, head): (batch, q_len,
            head_dim)}`` replaces a head's output, ``{("resid", layer): (batch, seq, embed_dim)}`` the residual
            stream after a layer (e.g. ``cache.heads[layer][:, head]``, ``cache.resid[layer]``).

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
    head_patches: dict[int, dict[int, Tensor]] = {}
    resid_patches: dict[int, Tensor] = {}
    for key, value in (patch or {}).items():
        kind, layer = (key[0], key[1]) if isinstance(key, tuple) and len(key) >= 2 else (None, None)
        if kind == "head" and len(key) == 3 and isinstance(layer, int) and 0 <= layer < len(modules):
            head_patches.setdefault(layer, {})[key[2]] = value
        elif kind == "resid" and len(key) == 2 and isinstance(layer, int) and 0 <= layer < len(modules):
            resid_patches[layer] = value
        else:
            raise ConfigError(
                "patch keys are ('head', layer, head) or ('resid', layer) with layer in "
                f"[0, {len(modules)}), got {key!r}"
            )
    hooks = {
        modules[layer]: _head_hook(
            per_layer.get(layer, {}),
            {h: m for (lay, h), m in (means or {}).items() if lay == layer},
            head_patches.get(layer, {}),
            token_mask,
        )
        for layer in set(per_layer) | set(head_patches)
    }
    layers = layer_modules(model)
    with ExitStack() as stack:
        stack.enter_context(head_hooks(hooks))
        for layer, value in resid_patches.items():
            stack.callback(layers[layer].register_forward_hook(_resid_hook(value, layer)).remove)
        yield model
