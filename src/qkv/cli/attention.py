"""``qkv attention``: what a model attends to in a text, as a PNG grid and/or an interactive HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.analysis.display import FLOW_LIMIT
from qkv.cli.common import add_device_option

__all__ = ["add_parser", "attention_report"]

HINT = "give some text to look at, e.g. qkv attention runs/quickstart 'To be, or not to be' --png grid.png"


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="draw a model's attention over a text (PNG grid, interactive HTML page)",
        description="Run MODEL on TEXT, capture the exact attention weights of every layer, and write them as a PNG "
        "grid and/or a self-contained interactive HTML page (works offline; the head, model, query and neuron views, "
        f"attention rollout, and flow for up to {FLOW_LIMIT} tokens). MODEL is a qkv run/checkpoint directory, "
        "a HuggingFace-format directory (BERT, GPT-2, Llama, Mistral or Qwen2), or 'minilm'.",
    )
    p.add_argument("model", help="qkv checkpoint, HF-format directory, or 'minilm'")
    p.add_argument("text", help="the text to look at")
    p.add_argument("--layer", type=int, help="draw only this layer (PNG) / focus it (query-key view of the page)")
    p.add_argument("--head", type=int, help="with --layer: only this head")
    p.add_argument("--average", action="store_true", help="PNG: average the heads of each layer")
    p.add_argument("--png", type=Path, help="write the grid here (.png, .svg or .pdf; missing directories are made)")
    p.add_argument("--html", type=Path, help="write the interactive page here (.html; missing directories are made)")
    add_device_option(p, dtype=True)
    p.set_defaults(run=run)


def attention_report(
    model,  # noqa: ANN001 - a qkv GPT or BertEncoder
    tokenizer,  # noqa: ANN001
    text: str | None,
    png: Path | None,
    html: Path | None,
    *,
    layer: int | None = None,
    head: int | None = None,
    average: bool = False,
    title: str | None = None,
    name: str = "attention",
    pretrained: bool = False,
    token_ids=None,  # noqa: ANN001 - (1, n) ids to use instead of encoding text
    head_scores=None,  # noqa: ANN001 - (name, (layers, heads)) for the page's head-score grid
) -> list[Path]:
    """Capture ``model``'s attention over ``text`` (or ready ``token_ids (1, n)``) and write the PNG and/or the page
    (:func:`qkv.show`'s explorer: rollout through every layer, flow for up to ``FLOW_LIMIT`` tokens, the neuron
    view); returns the paths written. ``title`` defaults to ``name`` and the start of the tokens drawn."""
    from qkv.analysis import show
    from qkv.cli.common import encode_prompt
    from qkv.errors import ConfigError
    from qkv.visualization import Explorer, plot_attention

    for flag, value in (("--layer", layer), ("--head", head)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} counts from 0 (the first), got {value}")

    text = text or ""  # (None with token_ids: nothing to encode)
    if pretrained:
        tokens = tokenizer.tokenizer.encode(text).tokens[: tokenizer.max_length]
    else:
        ids = token_ids if token_ids is not None else encode_prompt(tokenizer, text, model.config.max_seq_len, HINT)
        tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    if title is None:  # name what is drawn: the tokens kept, not the start of a text that was cut
        shown = "".join(tokens) if not pretrained else text
        cut = (
            ""
            if pretrained or token_ids is not None or len(shown) == len(text)
            else f" (its last {len(tokens)} tokens)"
        )
        title = f"{name}: {shown[:40]!r}{'…' if len(shown) > 40 else ''}{cut}"
    explorer = show(model, text if pretrained else ids, tokenizer, head_scores=head_scores, title=title)
    attentions = list(explorer.kinds[0].weights)  # (heads, n, n) per layer, on the host
    written = []
    if png is not None:
        written.append(plot_attention(attentions, tokens, png, layer=layer, head=head, average=average, title=title))
    if html is not None:  # the page opens on --layer/--head (default: the last layer, head 0)
        if layer is not None or head is not None:
            focus = (layer if layer is not None else -1, head or 0)  # (-1: the last layer)
            explorer = Explorer.of(explorer.kinds, title=title, focus=focus)
        written.append(explorer.save(html))
    return written


def run(args: argparse.Namespace) -> int:
    from qkv.cli.common import HTML_SUFFIXES, check_output_files
    from qkv.errors import ConfigError
    from qkv.runs import load_model_and_tokenizer
    from qkv.visualization.grid import IMAGE_SUFFIXES

    if not args.text:
        raise ConfigError(f"TEXT is empty: {HINT}")
    if args.png is None and args.html is None:
        raise ConfigError("say where to write: --png FILE and/or --html FILE")
    check_output_files({"png": IMAGE_SUFFIXES, "html": HTML_SUFFIXES}, png=args.png, html=args.html)
    model, tokenizer, pretrained = load_model_and_tokenizer(args.model, args.device, args.dtype)
    for path in attention_report(
        model,
        tokenizer,
        args.text,
        args.png,
        args.html,
        layer=args.layer,
        head=args.head,
        average=args.average,
        name=Path(args.model).name,
        pretrained=pretrained,
    ):
        print(f"written: {path}")
    return 0
