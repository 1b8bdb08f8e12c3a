"""An interactive attention explorer as one self-contained HTML file: no CDN, no network, JS and CSS inlined.

Views: *head view* (query tokens linked to key tokens, line opacity = weight; pick the layer and heads), *model view*
(layer × head thumbnails, filtered by layers and heads, click one to zoom), *query view* (the weights of one query
or the sum of several over the keys, labelled, for the chosen layer and each chosen head; with ``scores`` and one
query, the softmax's input above them and the keys the mask forbade), and, when given, *rollout / flow* (how much
of each input token reaches each position, Abnar & Zuidema 2020), *head scores* (a layer × head grid, e.g. ablation
importance; click a head to zoom into its pattern) and the *alignment* of a source and a target sentence (seq2seq).

The page draws only numbers it is given: the weights the model used (from :func:`qkv.capture_attention` or the
model's own output), the scores its softmax received, and rollout, flow and head scores computed from them in
Python. It computes no softmax and applies no mask of its own, so what it shows for causal, windowed, padded and
cross-attention is what the model computed; the only arithmetic in the page is the sum of the selected queries'
weights.

Long inputs stay responsive because each query row keeps only its ``top_k`` largest weights (all of them for short
inputs); the page says which.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from qkv.errors import ShapeError, describe_shape

__all__ = ["PixelFields", "attention_page", "write_attention_page"]

DENSE_LIMIT = 64  # up to this many tokens every weight is kept; beyond, the top_k per query row
# the data of a page with no attention to show (an image model without it: only the pixel-field view)
NO_ATTENTION = {"tokens": [], "queryTokens": [], "queryOffset": 0, "cross": False, "layers": 0, "heads": 0, "rows": [],
                "note": "", "topK": None, "focus": [0, 0], "scores": None, "alignment": None, "rollout": None,
                "flow": None, "headScores": None}  # fmt: skip


def _round(x: float) -> float | None:
    """4 decimals; ``-inf`` (a key the mask forbade) becomes ``null`` in the JSON."""
    return None if x == float("-inf") else round(x, 4)


def _rows(weights: Tensor, top_k: int | None) -> list:
    """``(q, k)`` weights -> per query row ``[[key, weight], ...]`` rounded to 4 decimals, largest first."""
    w = weights.float()
    if top_k is not None and top_k < w.shape[-1]:
        values, index = w.topk(top_k, dim=-1)
    else:
        values, index = w.sort(dim=-1, descending=True)
    return [[[int(j), round(float(v), 4)] for j, v in zip(ji, vi) if v > 0] for ji, vi in zip(index, values)]


def attention_page(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    *,
    title: str = "attention",
    scores: Sequence[Tensor] | None = None,
    focus: tuple[int, int] | None = None,
    alignment: tuple[Sequence[str], Sequence[str], Tensor] | None = None,
    query_tokens: Sequence[str] | None = None,
    top_k: int = 8,
    rollout: Tensor | None = None,
    flow: Tensor | None = None,
    head_scores: tuple[str, Tensor] | None = None,
    pixel_fields: PixelFields | None = None,
) -> str:
    """The page's HTML.

    Args:
        attentions: per layer ``(heads, q_len, k_len)`` for one sequence; ``tokens`` are the ``k_len`` key tokens.
        scores: per layer ``(heads, q_len, k_len)``, what each softmax received (``-inf`` where the key was
            forbidden), e.g. :meth:`AttentionCapture.scores`; shown in the query view for inputs of up to
            ``DENSE_LIMIT`` keys (optional).
        focus: the (layer, head) the page opens on (default: the last layer, head 0).
        alignment: ``(source_tokens, target_tokens, weights (target, source))`` of a seq2seq model (optional).
        query_tokens: the ``q_len`` query tokens when they are not the last ``q_len`` of ``tokens``: a decoder's
            cross-attention, target tokens looking at source tokens. Default: self-attention, the queries are the
            last ``q_len`` tokens (all of them, or the new ones of a cached step).
        top_k: for inputs longer than ``DENSE_LIMIT`` tokens, the weights kept per query row (largest first).
        rollout: ``(layers, seq, seq)`` attention rollout through layers ``0..l`` for each ``l``
            (:func:`qkv.analysis.attention_rollout` with ``every_layer=True``); self-attention over all tokens only.
        flow: ``(seq, seq)`` attention flow from the last layer (:func:`qkv.analysis.attention_flow`; short inputs).
        head_scores: ``(name, (layers, heads))`` one number per head, e.g. :func:`qkv.analysis.head_importance`.
        pixel_fields: an image model's dependence maps (:class:`PixelFields`); with no ``attentions`` (an
            empty list: PixelCNN, MADE) the page shows only them.
    """
    if not attentions:
        if pixel_fields is None:
            raise ShapeError("no attention layers given (and no pixel fields to show instead)")
        return _render({**NO_ATTENTION, "title": title, "pixelFields": pixel_fields.payload()}, title)
    k_len = attentions[0].shape[-1]
    keep = None if k_len <= DENSE_LIMIT else top_k
    q_len = attentions[0].shape[-2]
    if len(tokens) != k_len:
        raise ShapeError(f"tokens has {len(tokens)} entries but the attention has {k_len} keys")
    if query_tokens is not None and len(query_tokens) != q_len:
        raise ShapeError(f"query_tokens has {len(query_tokens)} entries but the attention has {q_len} queries")
    if scores is not None and [tuple(s.shape) for s in scores] != [tuple(w.shape) for w in attentions]:
        raise ShapeError(
            f"scores must have the shape of the weights, layer by layer: {[tuple(w.shape) for w in attentions]}, "
            f"got {[tuple(s.shape) for s in scores]}"
        )
    heads = int(attentions[0].shape[0])
    square = (len(attentions), k_len, k_len)
    for name, value, shape in (("rollout", rollout, square), ("flow", flow, square[1:])):
        if value is not None and (query_tokens is not None or q_len != k_len or tuple(value.shape) != shape):
            got = describe_shape(value.shape) + (" with cross-attention" if query_tokens is not None else "")
            raise ShapeError(f"{name} must be {describe_shape(shape)} for self-attention over all {k_len} tokens, "
                             f"got {got}")  # fmt: skip
    if head_scores is not None and tuple(head_scores[1].shape) != (len(attentions), heads):
        raise ShapeError(
            f"head_scores must be (layers, heads) = ({len(attentions)}, {heads}), got "
            f"{describe_shape(head_scores[1].shape)}"
        )
    layer, head = focus if focus is not None else (len(attentions) - 1, 0)
    if not (0 <= layer < len(attentions) and 0 <= head < attentions[0].shape[0]):
        raise ShapeError(f"focus {focus} is not a (layer, head) of {len(attentions)} layers × {attentions[0].shape[0]}")
    payload = {
        "title": title,
        "tokens": list(tokens),
        "queryTokens": list(tokens)[-q_len:] if query_tokens is None else list(query_tokens),
        # rows at which query i is drawn: self-attention queries sit beside their own key rows
        "queryOffset": k_len - q_len if query_tokens is None else 0,
        "cross": query_tokens is not None,
        "layers": len(attentions),
        "heads": heads,
        "rows": [[_rows(layer[h], keep) for h in range(layer.shape[0])] for layer in attentions],
        "note": (
            "every weight is shown"
            if keep is None
            else f"each query row shows its {keep} largest weights ({k_len} keys)"
        ),
        "topK": keep,  # null: every weight is in rows
        "focus": [layer, head],
        # per layer, head and query row: the softmax's input for every key (null = forbidden); short inputs only
        "scores": None
        if scores is None or keep is not None
        else [[[[_round(float(x)) for x in row] for row in s[h].float()] for h in range(s.shape[0])] for s in scores],
        "alignment": None,
        # per layer l, per position: [[token, share], ...] of the inputs that reach it through layers 0..l
        "rollout": None if rollout is None else [_rows(r, keep) for r in rollout],
        "flow": None if flow is None else _rows(flow, keep),
        "pixelFields": None if pixel_fields is None else pixel_fields.payload(),
        "headScores": None
        if head_scores is None
        else {"name": head_scores[0], "values": [[round(float(x), 6) for x in row] for row in head_scores[1]]},
    }
    if alignment is not None:
        source, target, weights = alignment
        payload["alignment"] = {
            "source": list(source),
            "target": list(target),
            "weights": [[round(float(x), 4) for x in row] for row in weights.float()],
        }
    return _render(payload, title)


def _render(payload: dict, title: str) -> str:
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")  # no early </script>
    return TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


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
            "maps": [
                {"name": name, "values": [[round(float(x), 5) for x in m.flatten()] for m in values.double()]}
                for name, values in self.maps.items()
            ],
        }


def write_attention_page(path: str | Path, *args: object, **kwargs: object) -> Path:
    """Write :func:`attention_page` to ``path`` (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(attention_page(*args, **kwargs), encoding="utf-8")  # type: ignore[arg-type]  # (attention_page's own arguments)
    return path


TEMPLATE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")  # the page: HTML + CSS + JS
