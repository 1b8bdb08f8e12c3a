"""A capture's attention layers as the explorer's kinds of attention: one per kind of module (an encoder-decoder's
encoder self-, decoder self- and cross-attention), labelled, with padding cut off."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor

from qkv.errors import ConfigError, ShapeError
from qkv.visualization.capture import AttentionCapture
from qkv.visualization.html import AttentionKind, NeuronVectors

__all__ = ["attention_kinds", "labels_for"]


def labels_for(tokens: Sequence[str] | None, n: int) -> list[str]:
    """``tokens``, or the positions ``"0"``, ``"1"``, ... of ``n`` unlabelled ones."""
    return list(tokens) if tokens is not None else [str(i) for i in range(n)]


def _kind_name(pattern: str, groups: int) -> str:
    if "cross" in pattern:
        return "cross-attention"
    if groups == 1:
        return "self-attention"
    return f"{pattern.split('.')[0]} self-attention" if pattern.split(".")[0] in ("encoder", "decoder") else pattern


def _group(names: dict[int, str]) -> dict[str, list[int]]:
    """Attention layers grouped by their module path with layer numbers wildcarded: ``encoder.*.attn`` etc."""
    groups: dict[str, list[int]] = {}
    for index, name in sorted(names.items()):
        groups.setdefault(re.sub(r"\.\d+(?=\.|$)", ".*", name), []).append(index)
    return groups


def _trim(weights: list[Tensor], n_keys: int, n_queries: int | None, what: str) -> list[Tensor]:
    """Cut padding: keys beyond ``n_keys`` (and queries beyond ``n_queries``) must have no weight."""
    k = weights[0].shape[-1]
    if n_keys > k:
        raise ShapeError(f"{what}: {n_keys} tokens given but the attention has {k} keys")
    if n_keys < k and any(bool(w[..., n_keys:].any()) for w in weights):
        raise ShapeError(f"{what}: {n_keys} tokens given but the attention has {k} keys, and the keys beyond "
                         f"the tokens have weight: give a label for every key")  # fmt: skip
    return [w[:, : n_queries if n_queries is not None else None, :n_keys] for w in weights]


def attention_kinds(
    capture: AttentionCapture,
    tokens: Sequence[str] | None,
    target_tokens: Sequence[str] | None = None,
    *,
    row: int = 0,
) -> list[AttentionKind]:
    """A capture's layers as the explorer's kinds of attention (one per kind of module: an encoder-decoder's
    ``encoder.*.attn``, ``decoder.*.self_attn``, ``decoder.*.cross_attn``), batch row ``row``, labelled by ``tokens``
    (self-attention's keys; a seq2seq model's source) and ``target_tokens``; padding beyond the labels cut off."""
    groups = _group({i: capture.names[i] for i in capture.layers if capture.calls.get(i)})
    if not groups:
        raise ConfigError("nothing was captured: run the model inside `with qkv.capture_attention(model) as cap:`")
    batch = capture.calls[next(iter(groups.values()))[0]][0].shape[0]
    if not -batch <= row < batch:
        raise ConfigError(f"row {row} is not a row of the batch of {batch} that was captured")
    kinds = []
    for pattern, layers in groups.items():
        name = _kind_name(pattern, len(groups))
        weights = [capture.weights(i)[row] for i in layers]
        decoder_self = name == "decoder self-attention"
        keys = target_tokens if decoder_self else tokens
        queries = target_tokens if name == "cross-attention" else None
        keys = labels_for(keys, weights[0].shape[-1])
        if name == "cross-attention" and queries is None:
            queries = labels_for(None, weights[0].shape[-2])
        q_keep = (
            len(queries)
            if queries is not None
            else (len(keys) if weights[0].shape[-2] == weights[0].shape[-1] else None)
        )
        weights = _trim(weights, len(keys), q_keep, name)
        scores = [capture.scores(i)[row] for i in layers] if all(i in capture.score_calls for i in layers) else None
        if scores is not None:
            scores = [s[:, : w.shape[1], : w.shape[2]] for s, w in zip(scores, weights)]
        vectors = capture.vectors(layers, row) if all(i in capture.vector_calls for i in layers) else None
        if vectors is not None:
            q_len, k_len = weights[0].shape[1:]
            vectors = NeuronVectors([t[:, :q_len] for t in vectors.q], [t[:, :k_len] for t in vectors.k],
                                    [t[:, :k_len] for t in vectors.v], [t[:, :q_len] for t in vectors.z],
                                    vectors.scale, vectors.hooks)  # fmt: skip
        kinds.append(AttentionKind(name, weights, keys, queries, scores, vectors))
    return kinds
