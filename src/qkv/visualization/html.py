"""An interactive attention explorer as one self-contained HTML file: no CDN, no network, JS and CSS inlined.

Views: *head view* (query tokens linked to key tokens, line opacity = weight; pick the layer and heads), *model view*
(layer × head thumbnails, click one to zoom), *query/key view* (the scaled dot products q·k behind one query's row of
weights, for one head), and, when given, the *alignment* of a source and a target sentence (seq2seq).

Long inputs stay responsive because each query row keeps only its ``top_k`` largest weights (all of them for short
inputs); the page says which.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from qkv.errors import ShapeError

__all__ = ["attention_page", "write_attention_page"]

DENSE_LIMIT = 64  # up to this many tokens every weight is kept; beyond, the top_k per query row


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
    queries: Tensor | None = None,
    keys: Tensor | None = None,
    focus: tuple[int, int] = (0, 0),
    scale: float | None = None,
    alignment: tuple[Sequence[str], Sequence[str], Tensor] | None = None,
    query_tokens: Sequence[str] | None = None,
    top_k: int = 8,
) -> str:
    """The page's HTML.

    Args:
        attentions: per layer ``(heads, q_len, k_len)`` for one sequence; ``tokens`` are the ``k_len`` key tokens.
        queries, keys: ``(q_len, head_dim)`` and ``(k_len, head_dim)`` of the ``focus`` (layer, head), for the
            query/key view (optional).
        alignment: ``(source_tokens, target_tokens, weights (target, source))`` of a seq2seq model (optional).
        query_tokens: the ``q_len`` query tokens when they are not the last ``q_len`` of ``tokens``: a decoder's
            cross-attention, target tokens looking at source tokens. Default: self-attention, the queries are the
            last ``q_len`` tokens (all of them, or the new ones of a cached step).
    """
    k_len = attentions[0].shape[-1]
    keep = None if k_len <= DENSE_LIMIT else top_k
    q_len = attentions[0].shape[-2]
    if len(tokens) != k_len:
        raise ShapeError(f"tokens has {len(tokens)} entries but the attention has {k_len} keys")
    if query_tokens is not None and len(query_tokens) != q_len:
        raise ShapeError(f"query_tokens has {len(query_tokens)} entries but the attention has {q_len} queries")
    payload = {
        "title": title,
        "tokens": list(tokens),
        "queryTokens": list(tokens)[-q_len:] if query_tokens is None else list(query_tokens),
        # rows at which query i is drawn: self-attention queries sit beside their own key rows
        "queryOffset": k_len - q_len if query_tokens is None else 0,
        "cross": query_tokens is not None,
        "layers": len(attentions),
        "heads": int(attentions[0].shape[0]),
        "rows": [[_rows(layer[h], keep) for h in range(layer.shape[0])] for layer in attentions],
        "note": (
            "every weight is shown"
            if keep is None
            else f"each query row shows its {keep} largest weights ({k_len} keys)"
        ),
        "qk": None,
        "alignment": None,
    }
    if queries is not None and keys is not None:
        d = queries.shape[-1]
        payload["qk"] = {
            "layer": focus[0],
            "head": focus[1],
            "scale": scale if scale is not None else d**-0.5,
            "q": [[round(float(x), 4) for x in row] for row in queries.float()],
            "k": [[round(float(x), 4) for x in row] for row in keys.float()],
        }
    if alignment is not None:
        source, target, weights = alignment
        payload["alignment"] = {
            "source": list(source),
            "target": list(target),
            "weights": [[round(float(x), 4) for x in row] for row in weights.float()],
        }
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")  # no early </script>
    return TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_attention_page(path: str | Path, *args: object, **kwargs: object) -> Path:
    """Write :func:`attention_page` to ``path`` (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(attention_page(*args, **kwargs), encoding="utf-8")  # type: ignore[arg-type]
    return path


TEMPLATE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")  # the page: HTML + CSS + JS
