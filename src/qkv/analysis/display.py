"""``qkv.show``: the attention explorer inline in a notebook, for whatever a person holds.

``qkv.show(model, "text", tokenizer)`` runs the model once and shows every kind of attention it has (with the
neuron view's vectors from its hook points); ``qkv.show(capture, tokens)`` shows a
:func:`qkv.capture_attention` capture, ``qkv.show(cache, tokens)`` a :func:`qkv.record` cache; head scores,
rollout, flow, a seq2seq alignment and an image model's pixel fields ride along as keywords or alone. The result,
an :class:`~qkv.visualization.widget.Explorer`, shows itself as a cell's value and ``.save(path)`` writes the same
view as an offline page.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qkv.analysis.flow import attention_flow, attention_rollout
from qkv.attention.hooks import ActivationCache
from qkv.devices import model_device
from qkv.errors import ConfigError, ShapeError, describe_shape
from qkv.visualization.capture import AttentionCapture, attention_modules, capture_attention
from qkv.visualization.html import AttentionKind, PixelFields
from qkv.visualization.kinds import attention_kinds, labels_for
from qkv.visualization.numbers import FLOAT32_LIMIT, VECTOR_LIMIT
from qkv.visualization.widget import Explorer

__all__ = ["FLOW_LIMIT", "show"]

FLOW_LIMIT = 16  # attention flow runs one max-flow per pair of tokens: 2 s for 16 tokens x 6 layers, 15 s for 24


def show(
    what: Any = None,
    tokens: Sequence[str] | str | Tensor | None = None,
    tokenizer: Any = None,
    *,
    pair: str | None = None,
    target_tokens: Sequence[str] | None = None,
    target: Tensor | None = None,
    row: int = 0,
    segments: int | None = None,
    scale: float | None = None,
    rollout: Tensor | bool | None = None,
    flow: Tensor | bool | None = None,
    head_scores: tuple[str, Tensor] | Tensor | None = None,
    alignment: tuple[Sequence[str], Sequence[str], Tensor] | None = None,
    pixel_fields: PixelFields | None = None,
    title: str | None = None,
    focus: tuple[int, int] | tuple[int, int, int] | None = None,
) -> Explorer:
    """The attention explorer for ``what``: a cell's value shows it inline, ``.save(path)`` writes a page.

    ``what`` is one of:

    * a qkv model: run once on ``tokens`` (a text, with ``tokenizer``; or ids ``(1, n)``, labelled by their
      position or by ``tokenizer``), with ``pair`` a second sentence for a BERT-style encoder (its segments get
      the A/B filter); an encoder-decoder takes ``target`` ids ``(1, m)``, the decoder's inputs, and shows its
      encoder self-, decoder self- and cross-attention;
    * an :class:`~qkv.visualization.AttentionCapture` or an :class:`~qkv.analysis.ActivationCache` (from
      :func:`qkv.record` with the attention hook points), labelled by ``tokens`` (the keys of self-attention, the
      source of a seq2seq model) and ``target_tokens`` (its target);
    * per-layer weights ``(heads, q, k)`` (a list) or one tensor ``(layers, heads, q, k)``;
    * ``None``, with only ``head_scores``, ``alignment`` or ``pixel_fields`` to show.

    Args:
        row: the batch row shown (captures and caches of a batch); padding beyond ``len(tokens)`` is cut off (it
            must have weight 0: a key the model could see is never hidden).
        segments: the first token of the second sentence of a pair (found from ``pair`` when the model is run).
        scale: the neuron view's score multiplier for a recorded cache (default 1/√head_dim, the scaled dot
            product); a capture and a model know theirs.
        rollout: rollout through every layer (:func:`qkv.analysis.attention_rollout`); computed by default for
            self-attention over all tokens; ``False`` to leave it out.
        flow: attention flow from the last layer; computed by default for inputs of up to ``FLOW_LIMIT`` tokens.
        head_scores: ``(name, (layers, heads))`` one number per head, or the tensor alone.
        alignment: ``(source_tokens, target_tokens, weights (target, source))``.
        focus: the ``(layer, head)`` or ``(kind, layer, head)`` the explorer opens on.
    """
    if isinstance(head_scores, Tensor):
        head_scores = ("head score", head_scores)
    labels = tokens if isinstance(tokens, Sequence) and not isinstance(tokens, str) else None
    if not isinstance(what, nn.Module) and tokens is not None and labels is None:
        raise ConfigError(f"tokens label the keys: give a list of strings, one per key (got a {type(tokens).__name__}; "
                          "a text is for a model: qkv.show(model, text, tokenizer))")  # fmt: skip
    if labels is not None and not all(isinstance(t, str) for t in labels):
        raise ConfigError(
            "tokens must be strings, one per key (decode ids first: [tokenizer.decode([i]) for i in ids])"
        )
    if isinstance(what, nn.Module):
        capture, labels, target_tokens, segments = _run(what, tokens, tokenizer, pair, target, segments)
        kinds = attention_kinds(capture, labels, target_tokens)
        name = title or (tokens if isinstance(tokens, str) else type(what).__name__)
    elif isinstance(what, AttentionCapture):
        kinds, name = attention_kinds(what, labels, target_tokens, row=row), title or "captured attention"
    elif isinstance(what, ActivationCache):
        kinds, name = _cache_kinds(what, labels, target_tokens, row, scale), title or "recorded attention"
    elif isinstance(what, Tensor | list | tuple):
        layers = list(what.unbind(0) if isinstance(what, Tensor) else what)
        if any(not isinstance(w, Tensor) or w.dim() != 3 for w in layers):
            raise ShapeError("attention weights must be (layers, heads, q, k) or a list of (heads, q, k)")
        n = layers[0].shape[-1]
        kinds, name = [AttentionKind("self-attention", layers, labels_for(labels, n))], title or "attention"
    elif what is None:
        kinds, name = [], title or "attention"
    else:
        raise ConfigError(
            f"qkv.show cannot show a {type(what).__name__}: give a qkv model, an AttentionCapture, an "
            "ActivationCache, attention weights, or head_scores/alignment/pixel_fields alone"
        )
    if kinds:
        first = kinds[0]
        first.segments = segments if segments is not None else first.segments
        first.head_scores = head_scores
        _add_flow(first, rollout, flow)
    elif head_scores is not None:  # head scores alone: a grid with no patterns to zoom into
        raise ConfigError("head_scores need the attention they score: qkv.show(model_or_capture, ..., head_scores=)")
    return Explorer.of(kinds, title=str(name), focus=focus, alignment=alignment, pixel_fields=pixel_fields)


def _add_flow(kind: AttentionKind, rollout: Tensor | bool | None, flow: Tensor | bool | None) -> None:
    """Rollout (and flow, for short inputs) of a self-attention over all tokens, unless given or refused."""
    heads, q, k = kind.weights[0].shape
    square = kind.query_tokens is None and q == k
    layers = [w[None] for w in kind.weights]
    if isinstance(rollout, Tensor) or rollout is False:
        kind.rollout = rollout if isinstance(rollout, Tensor) else None
    elif square:
        kind.rollout = attention_rollout(layers, every_layer=True)[:, 0]
    if isinstance(flow, Tensor) or flow is False:
        kind.flow = flow if isinstance(flow, Tensor) else None
    elif square and (flow is True or k <= FLOW_LIMIT):
        kind.flow = attention_flow(layers)[0]


def _run(
    model: nn.Module, tokens: Any, tokenizer: Any, pair: str | None, target: Tensor | None, segments: int | None
) -> tuple[AttentionCapture, list[str], list[str] | None, int | None]:
    """Run ``model`` once under a capture with scores and vectors: (capture, key tokens, target tokens, segments)."""
    if isinstance(tokens, str):
        if tokenizer is None:
            raise ConfigError("to show a model on a text, give its tokenizer: qkv.show(model, text, tokenizer)")
        ids, labels, types = _encode(tokenizer, tokens, pair)
        if types is not None and int(types.sum()) > 0:
            segments = int((types[0] == 1).nonzero()[0])
    elif isinstance(tokens, Tensor):
        if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.dtype != torch.long:
            raise ShapeError(f"token ids must be long (1, n), got {tokens.dtype} {describe_shape(tokens.shape)}")
        ids, types = tokens, None
        labels = (
            [tokenizer.decode([i]) for i in ids[0].tolist()]
            if tokenizer is not None
            else labels_for(None, ids.shape[1])
        )
    else:
        raise ConfigError("give the model's input: a text (with its tokenizer) or token ids (1, n)")
    device = model_device(model)
    parameters = inspect.signature(model.forward).parameters
    kwargs: dict[str, Tensor] = {}
    if types is not None and "token_type_ids" in parameters:
        kwargs["token_type_ids"] = types.to(device)
    target_labels = None
    if target is not None:
        target_labels = [tokenizer.decode([i]) for i in target[0].tolist()] if tokenizer is not None else None
        target_labels = target_labels or labels_for(None, target.shape[1])
    elif "tgt_ids" in parameters:
        raise ConfigError("an encoder-decoder needs the decoder's input too: qkv.show(model, src_ids, target=tgt_ids)")
    # the softmax's inputs and the neuron view's vectors are recorded only where the explorer keeps them (its float32
    # size, VECTOR_LIMIT tokens): a long input's scores would cost as much memory as its weights again, for nothing
    longest = max(ids.shape[1], target.shape[1] if target is not None else 0)
    weights = sum(m.num_heads for m in attention_modules(model)) * longest**2
    scores, vectors = weights <= FLOAT32_LIMIT, longest <= VECTOR_LIMIT
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_attention(model, scores=scores, vectors=vectors) as capture:
            args = (ids.to(device),) if target is None else (ids.to(device), target.to(device))
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return capture, labels, target_labels, segments


def _encode(tokenizer: Any, text: str, pair: str | None) -> tuple[Tensor, list[str], Tensor | None]:
    """``(1, n)`` ids, their tokens and (for a pair) token types, with a HuggingFace-backed tokenizer's own pieces."""
    backend = getattr(tokenizer, "tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):  # a HuggingFace `tokenizers` Tokenizer
        encoding = backend.encode(text, pair) if pair is not None else backend.encode(text)
        ids = torch.tensor([encoding.ids], dtype=torch.long)
        return ids, list(encoding.tokens), torch.tensor([encoding.type_ids], dtype=torch.long)
    if pair is not None:
        raise ConfigError(f"{type(tokenizer).__name__} does not encode sentence pairs; pair= needs a BERT tokenizer")
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("the text is empty: nothing to show")
    return torch.tensor([ids], dtype=torch.long), [tokenizer.decode([i]) for i in ids], None


def _cache_kinds(
    cache: ActivationCache, tokens: Sequence[str] | None, target_tokens: Sequence[str] | None, row: int,
    scale: float | None,
) -> list[AttentionKind]:  # fmt: skip
    """A :func:`qkv.record` cache as a capture: its ``hook_pattern`` (``hook_attn_scores``, and q, k, v, z for the
    neuron view) per attention module."""
    capture = AttentionCapture(layers=[], heads=None)
    modules = [name[: -len(".hook_pattern")] for name in cache if name.endswith(".hook_pattern")]
    if not modules:
        raise ConfigError("the cache has no hook_pattern: record the attention, e.g. qkv.record(model, "
                          "lambda name: 'attn' in name)")  # fmt: skip
    for index, module in enumerate(modules):
        capture.layers.append(index)
        capture.names[index] = module
        capture.calls[index] = cache.calls(f"{module}.hook_pattern")
        if f"{module}.hook_attn_scores" in cache:
            capture.score_calls[index] = cache.calls(f"{module}.hook_attn_scores")
        q_name = "hook_rot_q" if f"{module}.hook_rot_q" in cache else "hook_q"
        k_name = "hook_rot_k" if f"{module}.hook_rot_k" in cache else "hook_k"
        names = {"q": q_name, "k": k_name, "v": "hook_v", "z": "hook_z"}
        if all(f"{module}.{hook}" in cache for hook in names.values()):
            heads = capture.calls[index][0].shape[1]
            capture.vector_calls[index] = {
                key: [t.float().repeat_interleave(heads // t.shape[1], dim=1) for t in cache.calls(f"{module}.{hook}")]
                for key, hook in names.items()
            }
            capture.vector_hooks[index] = names
            capture.scales[index] = scale if scale is not None else cache[f"{module}.hook_q"].shape[-1] ** -0.5
    return attention_kinds(capture, tokens, target_tokens, row=row)


def _show_cache(cache: ActivationCache) -> dict[str, Any] | None:
    """A recorded cache as a notebook shows it: the explorer when it holds attention patterns (keys labelled by
    position; ``qkv.show(cache, tokens)`` labels them), else IPython's own display."""
    if not any(name.endswith(".hook_pattern") for name in cache):
        return None
    return show(cache)._repr_mimebundle_()


def _register_notebook_display() -> None:
    """In a notebook, a :func:`qkv.record` cache of attention hook points shows the explorer as a cell's value.
    (ActivationCache lives in the attention core, which knows nothing of the explorer: IPython's formatter registry
    joins them, only where IPython runs.)"""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        shell.display_formatter.mimebundle_formatter.for_type(ActivationCache, _show_cache)


_register_notebook_display()
