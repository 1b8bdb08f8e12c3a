"""The tour as one self-contained HTML page (figures inlined as PNG data URIs; no script, no network)."""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from typing import Any, cast

import torch

from qkv.tour.base import Step
from qkv.tour.text import LANGUAGES, PAGE, STEPS
from qkv.visualization.html import POLICY

__all__ = ["fmt", "render"]


def fmt(value: Any) -> str:
    """A number, tensor, list or mapping as a person reads it: numbers to 3 significant digits, words in quotes,
    a (word, number) pair as ``“e” 0.392``, a shape as ``384×384``, a mapping as ``key: value; ...``."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))  # 1024, not 1.02e+03
    if isinstance(value, float):  # exact short values as they are (0.5); others to 3 significant digits, the
        return f"{value:g}" if float(f"{value:.3g}") == value else f"{value:#.3g}"  # zeros kept: 0.99996 -> 1.00
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "×".join(str(v) for v in value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return f"“{value[0]}” {fmt(value[1])}"
    if isinstance(value, dict):
        return "; ".join(f"{fmt([k]) if isinstance(k, str) else fmt(k)}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], str):
            return ", ".join(f"“{v}”" for v in value)
        if value and isinstance(value[0], tuple):
            return ", ".join(fmt(v) for v in value)
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return str(value)


def _quoted(numbers: dict[str, Any]) -> dict[str, str]:
    """A step's numbers as the page writes them (escaped); commands to paste as code."""
    return {
        name: f"<code>{html.escape(fmt(value))}</code>" if name == "commands" else html.escape(fmt(value))
        for name, value in numbers.items()
    }


def _paragraphs(step: Step, lang: str) -> list[str]:
    text = cast(dict[str, list[str]], STEPS[step.key][lang])  # (a step's text: title, body paragraphs, ...)
    return [paragraph.format_map(_Strict(_quoted(step.numbers), step.key)) for paragraph in text["body"]]


class _Strict(dict):
    """Formatting values that name the missing number instead of a KeyError deep inside."""

    def __init__(self, values: dict, key: str) -> None:
        super().__init__(values)
        self.key = key

    def __missing__(self, name: str) -> str:
        raise KeyError(f"tour step {self.key!r} has no number {name!r} for its text")


def _figure(png: bytes, caption: str, label: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{label}: {html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _table(header: list[str | tuple[str, str]], rows: list[list[str]], lang: str) -> str:
    words = [cell if isinstance(cell, str) else cell[LANGUAGES.index(lang)] for cell in header]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in words)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(step: Step, lang: str, *, explorers: bool = True) -> str:
    """One step as an HTML ``<section>`` in ``lang``: its title, paragraphs, tables and figures, and its interactive
    explorers (``explorers=False`` leaves them out, for a notebook that shows them as widgets)."""
    words = PAGE[lang]
    spec = cast(dict[str, Any], STEPS[step.key])  # (title, body, captions, unavailable by language)
    parts = [f'<section id="{step.key}"><h2>{html.escape(spec[lang]["title"])}</h2>']
    if step.unavailable != "runs":  # (a step without its runs has no numbers to quote)
        parts += [f"<p>{p}</p>" for p in _paragraphs(step, lang)]
    if step.unavailable is not None:
        message = spec["unavailable"][lang].format_map(_Strict(_quoted(step.numbers), step.key))
        parts.append(f'<p class="unavailable"><b>{words["unavailable"]}:</b> {message}</p>')
    parts += [_table(header, rows, lang) for header, rows in step.tables]
    caption = LANGUAGES.index(lang)
    parts += [
        _figure(png if isinstance(png, bytes) else png[lang], spec["captions"][name][caption], words["figure"])
        for name, png in step.figures
    ]
    if explorers:  # the interactive views: qkv's explorer, drawn from the numbers the step computed
        parts += [
            f'<figure class="explorer">{explorer.html(lang)}<figcaption>{words["figure"]}: '
            f"{html.escape(spec['captions'][name][caption])}</figcaption></figure>"
            for name, explorer in step.explorers
        ]
    return "\n".join(parts) + "</section>"


def render(steps: list[Step], lang: str) -> str:
    """The page in ``lang`` (``en`` or ``ko``)."""
    words = PAGE[lang]
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return TEMPLATE.format(
        policy=POLICY,
        lang=lang,
        title=html.escape(words["title"]),
        intro=html.escape(words["intro"].format(made=made)),
        sections="\n".join(section(step, lang) for step in steps),
    )


TEMPLATE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<title>{title}</title>
<style>
body{{font:15px/1.55 system-ui,'Noto Sans CJK KR',sans-serif;margin:24px auto;max-width:980px;color:#222;
padding:0 16px}}
h1{{font-size:22px}} h2{{font-size:18px;margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}}
figure{{margin:12px 0}} figure img{{max-width:100%;border:1px solid #eee}} figcaption{{font-size:12px;color:#666}}
table{{border-collapse:collapse;font-size:13px;margin:8px 0}} td,th{{border:1px solid #ddd;padding:3px 8px}}
.unavailable{{background:#fff8e1;border-left:3px solid #f0b429;padding:6px 10px}}
</style></head><body>
<h1>{title}</h1>
<p>{intro}</p>
{sections}
</body></html>
"""
