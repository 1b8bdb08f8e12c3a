"""``qkv tour``: the texts' worked examples computed live, as one offline page in English or Korean.

Each step is a function returning a :class:`Step` (its numbers and figures); :func:`build_tour` runs them all,
:func:`write_tour` renders the page. The numbers are the same in both languages; only the words differ.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from qkv.tour.base import Step
from qkv.tour.text import LANGUAGES

__all__ = ["LANGUAGES", "Step", "build_tour", "write_tour"]


def build_tour(runs: str | Path = "runs", progress: bool = False, train: bool = True) -> list[Step]:
    """Every step, in order. ``runs``: where trained runs are reused from (the quickstart's GPT, the dates
    translators of the README); what is missing is trained small into ``runs/tour/`` and reused next time
    (``train=False``: nothing is trained, and those steps name the commands instead). MiniLM comes with qkv's
    ``minilm`` extra."""
    from qkv.tour import models, seq2seq, toy
    from qkv.tour import runs as tour_runs

    runs = Path(runs)
    say = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else (lambda _: None)
    minilm = models._minilm()
    gpt = tour_runs.gpt_run(runs, train, say)
    dates = tour_runs.dates_runs(runs, train, say)
    attention, plain = dates[tour_runs.ATTENTION_RUN], dates[tour_runs.PLAIN_RUN]
    makers: list[Callable[[], Step]] = [
        toy.i_go_home,
        lambda: _merged(toy.single_head(), models.adjective_head(*minilm)),
        toy.scaling,
        lambda: models.multi_head(*minilm),
        lambda: models.masking(gpt),
        lambda: models.context_meaning(*minilm),
        lambda: seq2seq.bottleneck(attention, plain),
        lambda: _merged(toy.score_functions(), toy.local_alignment()),
        lambda: seq2seq.greedy_vs_beam(attention),
        toy.made_and_pixelcnn_masks,
    ]
    return [make() for make in tqdm(makers, desc="tour", unit="step", disable=not progress)]


def _merged(step: Step, more: Step) -> Step:
    """``step`` with the numbers and figures of ``more`` (a second part of the same step) added."""
    step.numbers.update(more.numbers)
    step.figures += more.figures
    step.tables += more.tables
    return step


def write_tour(path: str | Path, lang: str = "en", steps: list[Step] | None = None, runs: str | Path = "runs") -> Path:
    """Write the page in ``lang`` to ``path`` (the steps are computed unless given)."""
    from qkv.errors import ConfigError
    from qkv.tour.page import render
    from qkv.visualization.html import write_page

    if lang not in LANGUAGES:
        raise ConfigError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    page = render(steps if steps is not None else build_tour(runs), lang)
    return write_page(path, page)
