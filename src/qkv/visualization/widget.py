"""The explorer in a notebook: an anywidget running ``explorer.js`` (JupyterLab, Notebook 7, VS Code, Colab), with
a static fallback in the same output for renderers that have no widget manager.

One output carries three views of the same numbers: ``application/vnd.jupyter.widget-view+json`` (the live widget,
where a widget manager runs), ``text/html`` (the same ES module inlined, which nbconvert's HTML export keeps and runs
offline; inside it, a PNG of the focused head that renderers which strip scripts, such as GitHub's, still show) and
``text/plain``. Nothing is fetched from a network: the module, its CSS and the numbers travel in the output.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qkv.errors import ShapeError
from qkv.visualization.html import (
    LANGUAGES,
    MODULE,
    AttentionKind,
    explorer_payload,
    inline_html,
    page_html,
    write_page,
)

__all__ = ["Explorer", "in_notebook_kernel"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (where a widget can reach a front-end); False in a script or a plain shell."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and getattr(get(), "kernel", None) is not None


class Explorer:
    """The attention explorer for what a model computed on one input.

    In a notebook, an ``Explorer`` as a cell's value (or ``display(explorer)``) shows inline; :meth:`save` writes
    the same view as an offline HTML page; :meth:`widget` gives the anywidget itself (to place in an ipywidgets
    layout). Made by :func:`qkv.show`; ``payload`` is :func:`qkv.visualization.html.explorer_payload`'s JSON.
    """

    def __init__(self, payload: dict[str, Any], kinds: Sequence[AttentionKind] = ()) -> None:
        self.payload = payload
        self.kinds = list(kinds)  # the tensors behind the payload (for the static picture)
        self._widget: Any = None

    @classmethod
    def of(cls, kinds: Sequence[AttentionKind], **options: Any) -> Explorer:
        """An explorer of ``kinds`` with :func:`explorer_payload`'s ``options`` (title, focus, alignment, ...)."""
        return cls(explorer_payload(kinds, **options), kinds)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k['name']} ({k['layers']} layers × {k['heads']} heads)" for k in self.payload["kinds"])
        return f"<qkv explorer {self.payload['title']!r}: {kinds or 'pixel fields'}>"

    def localized(self, lang: str) -> Explorer:
        """This explorer with ``lang``'s words (``"en"`` or ``"ko"``); the numbers are the same."""
        if lang not in LANGUAGES:
            raise ShapeError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
        return Explorer({**self.payload, "lang": lang}, self.kinds)

    def html(self, lang: str | None = None) -> str:
        """The explorer as an HTML fragment that draws itself where scripts run (the static picture elsewhere), in
        ``lang``'s words (``"en"``, ``"ko"``; default: the payload's)."""
        explorer = self if lang is None else self.localized(lang)
        return inline_html(explorer.payload, self._static_picture())

    def save(self, path: str | Path) -> Path:
        """Write the explorer as a self-contained offline HTML page (UTF-8); returns the path."""
        return write_page(path, page_html(self.payload))

    def widget(self) -> Any:
        """The anywidget (``anywidget.AnyWidget``) showing this explorer; made once, then the same one."""
        if self._widget is None:
            self._widget = _widget_class()(data=json.dumps(self.payload, allow_nan=False))
        return self._widget

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": self.html()}
        if in_notebook_kernel() and _anywidget_available():
            view = self.widget()._repr_mimebundle_()
            bundle[WIDGET_VIEW] = view[WIDGET_VIEW] if isinstance(view, dict) else view[0][WIDGET_VIEW]
        return bundle

    def _static_picture(self) -> str:
        """An ``<img>`` of the focused head (matplotlib, from the same tensors) for renderers without scripts."""
        if not self.kinds:
            return "<p>qkv explorer (needs JavaScript)</p>"
        from qkv.visualization.grid import plot_alignment, plot_attention

        kind_index, layer, head = self.payload["focus"]
        kind = self.kinds[kind_index]
        weights = kind.weights[layer][head]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "focus.png"
            title = f"{self.payload['title']}: {kind.name}, layer {layer} · head {head}"
            if kind.query_tokens is not None:
                plot_alignment(weights, kind.tokens, kind.query_tokens, path, title=title)
            else:
                plot_attention([weights[None]], kind.tokens, path, layer=0, head=0, title=title)
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        alt = f"{kind.name}, layer {layer}, head {head}"
        return f'<img alt="{alt}" src="data:image/png;base64,{data}" style="max-width:640px">'


def _anywidget_available() -> bool:
    try:
        import anywidget  # noqa: F401
    except ImportError:
        return False
    return True


_WIDGET_CLASS: Any = None


def _widget_class() -> Any:
    """The anywidget class (defined on first use: importing anywidget loads ipywidgets)."""
    global _WIDGET_CLASS
    if _WIDGET_CLASS is None:
        try:
            import anywidget
            import traitlets
        except ImportError as error:
            raise ImportError("the inline explorer needs anywidget: pip install 'qkv[notebook]'") from error

        class ExplorerWidget(anywidget.AnyWidget):
            """qkv's attention explorer as a Jupyter widget; ``data`` is the explorer's JSON."""

            _esm = MODULE
            data = traitlets.Unicode("{}").tag(sync=True)

        _WIDGET_CLASS = ExplorerWidget
    return _WIDGET_CLASS
