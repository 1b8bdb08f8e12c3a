"""The attention explorer: one ES module (``explorer.js``) draws it in a self-contained offline HTML page, in a
notebook (the anywidget in :mod:`qkv.visualization.widget`) and in a notebook's static HTML export, from one JSON
payload built here. No CDN, no network.

Views: *head view* (query tokens linked to key tokens, line opacity = weight; hover a query or a key to see its
lines, double-click a head to show it alone), *model view* (layer × head thumbnails, filtered by layers and heads,
click one to zoom), *query view* (the weights of one query or the sum of several over the keys, for each chosen
head; with ``scores`` and one query, the softmax's input above them and the keys the mask forbade), the *neuron
view* (for one query and one key: q, k, q⊙k, q·k, ÷√d, the score the softmax received, the softmax over the keys and
the weighted sum of the values, from the model's hook points), and, when given, *rollout / flow* (Abnar & Zuidema
2020), *head scores* (a layer × head grid, e.g. ablation importance; click a head to zoom into its pattern), the
*alignment* of a source and a target sentence (seq2seq) and an image model's *pixel field*. A model with several
kinds of attention (an encoder-decoder's encoder self-, decoder self- and cross-attention) gets a switch between
them; an input of two segments (BERT's sentence pairs) a filter A→A, B→B, A→B, B→A; every view a dark and a light
display.

The page draws only numbers it is given: the weights the model used (from :func:`qkv.capture_attention` or the
model's own output), the scores its softmax received, the hook points' vectors, and rollout, flow and head scores
computed from them in Python. It computes no softmax and applies no mask of its own, so what it shows for causal,
windowed, padded and cross-attention is what the model computed. Its only arithmetic: the sum of the selected
queries' weights, and the neuron view's q⊙k and its sum (the seed's steps, shown next to the score the model
recorded). Numbers are stored at full precision up to a size (:mod:`qkv.visualization.numbers`) and the view says
when they are not.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.errors import ShapeError, describe_shape
from qkv.visualization.numbers import (
    TOP_K,
    VECTOR_LIMIT,
    encode_array,
    encode_weights,
    float_list,
)

__all__ = [
    "AttentionKind",
    "NeuronVectors",
    "PixelFields",
    "attention_page",
    "explorer_payload",
    "inline_html",
    "page_html",
    "write_attention_page",
    "write_page",
]

# the explorer, one ES module written in three files: its page and words, its numbers, its views
MODULE = "\n".join(
    (Path(__file__).parent / name).read_text(encoding="utf-8")
    for name in ("explorer_words.js", "explorer_data.js", "explorer.js")
)
LANGUAGES = ("en", "ko")  # the explorer's words (explorer.js's WORDS)
DENSE_LIMIT = 64  # up to this many tokens the CLI records the softmax inputs for the query view


@dataclass
class NeuronVectors:
    """What one attention module's hook points recorded for one sequence, per layer ``(heads, n, head_dim)``: ``q``
    and ``k`` as they entered the dot product (after rotary positions: ``hook_rot_q``/``hook_rot_k`` where the
    module has them, else ``hook_q``/``hook_k``), ``v`` (``hook_v``; ``k`` and ``v`` repeated to one per query head
    under grouped-query attention) and ``z`` (``hook_z``, each head's weighted sum of the values); ``scale`` the
    score's multiplier (1/√d for the scaled dot product); ``hooks`` the names of the hook points they came from."""

    q: list[Tensor]
    k: list[Tensor]
    v: list[Tensor]
    z: list[Tensor]
    scale: float
    hooks: dict[str, str] = field(default_factory=dict)

    def payload(self, layers: int, heads: int, q_len: int, k_len: int) -> dict[str, Any]:
        expected = {"q": q_len, "k": k_len, "v": k_len, "z": q_len}
        for name, rows in expected.items():
            values = getattr(self, name)
            shapes = [tuple(t.shape[:2]) for t in values]
            if len(values) != layers or shapes != [(heads, rows)] * layers:
                got = [describe_shape(t.shape) for t in values]
                raise ShapeError(f"neuron vectors {name} must be per layer (heads, {rows}, head_dim) with {heads} "
                                 f"heads for {layers} layers, got {got}")  # fmt: skip

        return {
            "dim": int(self.q[0].shape[-1]),
            "scale": self.scale,
            "hooks": self.hooks,
            **{name: encode_array(torch.stack(getattr(self, name))) for name in expected},
        }


@dataclass
class AttentionKind:
    """One kind of attention of a model on one input, e.g. an encoder's self-attention or a decoder's
    cross-attention: ``weights`` per layer ``(heads, q_len, k_len)`` for one sequence over the ``k_len`` key
    ``tokens``; the rest optional.

    Attributes:
        query_tokens: the ``q_len`` query tokens when they are not the last ``q_len`` of ``tokens`` (cross-attention:
            target tokens looking at source tokens). Default: self-attention, the queries are the last ``q_len``
            tokens (all of them, or the new ones of a cached step).
        scores: per layer ``(heads, q_len, k_len)``, what each softmax received (``-inf`` where the key was forbidden),
            e.g. :meth:`AttentionCapture.scores`.
        vectors: the hook points' q, k, v and z for the neuron view (:class:`NeuronVectors`).
        segments: the index of the first token of the second segment of a sentence pair (BERT's token type 1):
            enables the A→A, B→B, A→B, B→A filter.
        rollout: ``(layers, seq, seq)`` attention rollout through layers ``0..l`` for each ``l``
            (:func:`qkv.analysis.attention_rollout` with ``every_layer=True``); self-attention over all tokens only.
        flow: ``(seq, seq)`` attention flow from the last layer (:func:`qkv.analysis.attention_flow`).
        head_scores: ``(name, (layers, heads))`` one number per head, e.g. :func:`qkv.analysis.head_importance`.
    """

    name: str
    weights: Sequence[Tensor]
    tokens: Sequence[str]
    query_tokens: Sequence[str] | None = None
    scores: Sequence[Tensor] | None = None
    vectors: NeuronVectors | None = None
    segments: int | None = None
    rollout: Tensor | None = None
    flow: Tensor | None = None
    head_scores: tuple[str, Tensor] | None = None

    def payload(self, top_k: int = TOP_K) -> dict[str, Any]:
        """This kind's part of the page's JSON, after checking that every shape agrees."""
        weights, layers = self.weights, len(self.weights)
        if not layers:
            raise ShapeError(f"{self.name}: no attention layers given")
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ShapeError(f"{self.name}: weights must be per layer (heads, q_len, k_len), all alike, got "
                             f"{[describe_shape(w.shape) for w in weights]}")  # fmt: skip
        heads, q_len, k_len = weights[0].shape
        if len(self.tokens) != k_len:
            raise ShapeError(f"tokens has {len(self.tokens)} entries but the attention has {k_len} keys")
        if self.query_tokens is not None and len(self.query_tokens) != q_len:
            raise ShapeError(f"query_tokens has {len(self.query_tokens)} entries but the attention has {q_len} queries")
        if self.scores is not None and [tuple(s.shape) for s in self.scores] != [tuple(w.shape) for w in weights]:
            raise ShapeError(
                f"scores must have the shape of the weights, layer by layer: {[tuple(w.shape) for w in weights]}, "
                f"got {[tuple(s.shape) for s in self.scores]}"
            )
        square = (layers, k_len, k_len)
        for name, value, shape in (("rollout", self.rollout, square), ("flow", self.flow, square[1:])):
            if value is not None and (self.query_tokens is not None or q_len != k_len or tuple(value.shape) != shape):
                got = describe_shape(value.shape) + (" with cross-attention" if self.query_tokens is not None else "")
                raise ShapeError(f"{name} must be {describe_shape(shape)} for self-attention over all {k_len} "
                                 f"tokens, got {got}")  # fmt: skip
        if self.head_scores is not None and tuple(self.head_scores[1].shape) != (layers, heads):
            raise ShapeError(
                f"head_scores must be (layers, heads) = ({layers}, {heads}), got "
                f"{describe_shape(self.head_scores[1].shape)}"
            )
        if self.segments is not None and not 0 < self.segments < k_len:
            raise ShapeError(f"segments (the first token of the second segment) must be in 1..{k_len - 1}, "
                             f"got {self.segments}")  # fmt: skip
        encoded = encode_weights(weights, top_k)
        dense = encoded["encoding"] == "float32"
        keep = None if dense else top_k  # rollout and flow are thinned like the weights
        with_vectors = self.vectors is not None and max(q_len, k_len) <= VECTOR_LIMIT
        return {
            "name": self.name,
            "tokens": list(self.tokens),
            "queryTokens": list(self.tokens)[-q_len:] if self.query_tokens is None else list(self.query_tokens),
            # rows at which query i is drawn: self-attention queries sit beside their own key rows
            "queryOffset": k_len - q_len if self.query_tokens is None else 0,
            "cross": self.query_tokens is not None,
            "layers": layers,
            "heads": int(heads),
            "weights": encoded,
            # the softmax's input for every key (-inf = forbidden), float32 like the weights; dense inputs only
            "scores": None if self.scores is None or not dense else encode_array(_stack(self.scores)),
            "vectors": self.vectors.payload(layers, heads, q_len, k_len) if with_vectors and self.vectors else None,
            "vectorLimit": VECTOR_LIMIT if max(q_len, k_len) > VECTOR_LIMIT else None,  # the view says why no neurons
            "segments": self.segments,
            # per layer l, per position: [[token, share], ...] of the inputs that reach it through layers 0..l
            "rollout": None if self.rollout is None else [_rows(r, keep) for r in self.rollout],
            "flow": None if self.flow is None else _rows(self.flow, keep),
            "headScores": None
            if self.head_scores is None
            else {"name": self.head_scores[0], "values": float_list(self.head_scores[1])},
        }


def _stack(values: Sequence[Tensor]) -> Tensor:
    return torch.stack([v.detach().float().cpu() for v in values])


def _rows(weights: Tensor, keep: int | None) -> list:
    """``(q, k)`` -> per query row ``[[key, weight], ...]`` of its nonzero weights, largest first (its ``keep``
    largest when given); float32 values."""
    w = weights.detach().float().cpu()
    values, index = w.topk(keep, dim=-1) if keep is not None and keep < w.shape[-1] else w.sort(-1, descending=True)
    return [[[int(j), float(v)] for j, v in zip(ji, vi) if v > 0] for ji, vi in zip(index, values)]


@dataclass
class PixelFields:
    """What pixels of an image model depend on: ``maps`` name -> ``(n, H, W)``, the map of each pixel in
    ``pixels`` (raster indices, n of them), e.g. :func:`qkv.analysis.pixel_dependence` per pixel; the input
    ``image (H, W)`` of ``levels`` grey levels they were computed on; ``pixel`` the one the page opens on."""

    maps: dict[str, Tensor]
    pixels: list[int]
    image: Tensor
    levels: int
    pixel: int

    def payload(self) -> dict:
        height, width = self.image.shape
        for name, values in self.maps.items():
            if tuple(values.shape) != (len(self.pixels), height, width):
                raise ShapeError(
                    f"pixel map {name!r} must be (pixels, H, W) = ({len(self.pixels)}, {height}, {width}), got "
                    f"{describe_shape(values.shape)}"
                )
        if self.pixel not in self.pixels:
            raise ShapeError(f"pixel {self.pixel} has no map (maps are given for {self.pixels[:8]}...)")
        return {
            "height": int(height),
            "width": int(width),
            "levels": self.levels,
            "image": self.image.int().tolist(),
            "pixels": list(self.pixels),
            "pixel": self.pixel,
            "maps": [{"name": name, "values": float_list(values.flatten(1))} for name, values in self.maps.items()],
        }

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Shown in a notebook as the explorer's pixel-field view."""
        from qkv.visualization.widget import Explorer

        return Explorer(explorer_payload([], title="pixel fields", pixel_fields=self))._repr_mimebundle_()


def explorer_payload(
    kinds: Sequence[AttentionKind],
    *,
    title: str = "attention",
    focus: tuple[int, int] | tuple[int, int, int] | None = None,
    alignment: tuple[Sequence[str], Sequence[str], Tensor] | None = None,
    pixel_fields: PixelFields | None = None,
    top_k: int = TOP_K,
    opening: dict[str, Any] | None = None,
    lang: str = "en",
) -> dict[str, Any]:
    """The JSON the explorer draws: ``kinds`` of attention (the first is shown first), the ``(layer, head)`` or
    ``(kind, layer, head)`` it opens on (default: the first kind's last layer, head 0), a seq2seq ``alignment``
    ``(source_tokens, target_tokens, weights (target, source))`` and an image model's ``pixel_fields``;
    ``opening`` the view it opens on and, for the neuron view, its query and key: ``{"view": "neuron", "query": 0,
    "key": 2}`` (default: the head view, or the head scores when there are some); ``lang`` the explorer's words,
    ``"en"`` or ``"ko"``."""
    if not kinds and pixel_fields is None and alignment is None:
        raise ShapeError("no attention layers given (and no pixel fields or alignment to show instead)")
    parts = [kind.payload(top_k) for kind in kinds]
    kind, layer, head = (0, *focus) if focus is not None and len(focus) == 2 else (focus or (0, -1, 0))
    if parts:
        if not 0 <= kind < len(parts):
            raise ShapeError(f"focus kind {kind} is not one of the {len(parts)} kinds of attention given")
        layers, heads = parts[kind]["layers"], parts[kind]["heads"]
        layer = layers - 1 if focus is None else layer + layers if layer < 0 else layer
        if not 0 <= layer < layers:
            raise ShapeError(
                f"layer {layer} does not exist: {parts[kind]['name']} has {layers} layers (0..{layers - 1})"
            )
        if not 0 <= head < heads:
            raise ShapeError(f"head {head} does not exist: {parts[kind]['name']} has {heads} heads (0..{heads - 1})")
    if lang not in LANGUAGES:
        raise ShapeError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    views = ("head", "model", "qk", "neuron", "flow", "scores", "pixels", "align")
    if opening is not None and opening.get("view") not in views:
        raise ShapeError(f"opening view must be one of {', '.join(views)}, got {opening.get('view')!r}")
    payload: dict[str, Any] = {
        "title": title,
        "opening": opening,
        "lang": lang,
        "kinds": parts,
        "focus": [kind, layer, head],
        "alignment": None,
        "pixelFields": None if pixel_fields is None else pixel_fields.payload(),
    }
    if alignment is not None:
        source, target, weights = alignment
        if tuple(weights.shape) != (len(target), len(source)):
            raise ShapeError(f"alignment weights must be (target, source) = ({len(target)}, {len(source)}), got "
                             f"{describe_shape(weights.shape)}")  # fmt: skip
        payload["alignment"] = {"source": list(source), "target": list(target), "weights": float_list(weights)}
    return payload


def attention_page(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    *,
    title: str = "attention",
    scores: Sequence[Tensor] | None = None,
    focus: tuple[int, int] | None = None,
    alignment: tuple[Sequence[str], Sequence[str], Tensor] | None = None,
    query_tokens: Sequence[str] | None = None,
    top_k: int = TOP_K,
    rollout: Tensor | None = None,
    flow: Tensor | None = None,
    head_scores: tuple[str, Tensor] | None = None,
    pixel_fields: PixelFields | None = None,
    vectors: NeuronVectors | None = None,
    segments: int | None = None,
    name: str | None = None,
    more: Sequence[AttentionKind] = (),
) -> str:
    """The offline page's HTML for one kind of attention (and any ``more``).

    Args:
        attentions: per layer ``(heads, q_len, k_len)`` for one sequence; ``tokens`` are the ``k_len`` key tokens.
            Empty with only ``pixel_fields`` (PixelCNN, MADE): the page shows those alone.
        name: what this attention is (default ``"cross-attention"`` with ``query_tokens``, else
            ``"self-attention"``).
        top_k: beyond the float16 limit (:mod:`qkv.visualization.numbers`), the weights kept per query row.
        focus: the (layer, head) the page opens on (default: the last layer, head 0).
        alignment: ``(source_tokens, target_tokens, weights (target, source))`` of a seq2seq model (optional).

    ``scores``, ``query_tokens``, ``vectors``, ``segments``, ``rollout``, ``flow`` and ``head_scores`` are
    :class:`AttentionKind`'s.
    """
    kinds = list(more)
    if attentions:
        label = name or ("cross-attention" if query_tokens is not None else "self-attention")
        kinds.insert(0, AttentionKind(label, attentions, tokens, query_tokens, scores, vectors, segments, rollout, flow,
                                      head_scores))  # fmt: skip
    payload = explorer_payload(kinds, title=title, focus=focus, alignment=alignment, pixel_fields=pixel_fields,
                               top_k=top_k)  # fmt: skip
    return page_html(payload)


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")  # no early </script>


def page_html(payload: dict[str, Any]) -> str:
    """A whole offline HTML page showing ``payload`` (:func:`explorer_payload`)."""
    title = html.escape(payload["title"])
    return PAGE.replace("__TITLE__", title).replace("__BODY__", inline_html(payload))


def inline_html(payload: dict[str, Any], static: str = "") -> str:
    """The explorer as an HTML fragment (a ``<div>`` and an inline module script), for a notebook's HTML output and
    its static export; ``static`` (e.g. an ``<img>``) is shown where scripts do not run (GitHub's notebook view) and
    replaced by the explorer where they do."""
    # a module script has no document.currentScript: it finds its <div> by a fresh id
    host = f"qkv-{uuid.uuid4().hex[:12]}"
    return (
        f'<div class="qkv-explorer" id="{host}">{static}</div>\n<script type="module">\n{MODULE}\n'
        f'mount(document.getElementById("{host}"), {_json(payload)});\n</script>'
    )


# nothing may load from anywhere: scripts, styles and images are all inline
POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<title>qkv · __TITLE__</title>
<style>body{{margin:0;background:#fafafa}}</style>
</head><body>
__BODY__
</body></html>
"""


def write_attention_page(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`attention_page` to ``path`` (UTF-8)."""
    return write_page(path, attention_page(*args, **kwargs))


def write_page(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8; missing directories made) atomically: a Ctrl-C or a full disk leaves the
    old file or none, never half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
