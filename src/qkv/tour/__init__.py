"""``qkv tour``: the texts' worked examples computed live, as one offline page in English or Korean.

Each step is a function returning a :class:`Step` (its numbers and figures); :func:`build_tour` runs them all,
:func:`write_tour` renders the page. The numbers are the same in both languages; only the words differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from qkv.tour.base import Step
from qkv.tour.text import LANGUAGES

__all__ = ["LANGUAGES", "Step", "build_tour", "write_tour"]


def build_tour(runs: str | Path = "runs", progress: bool = False, train: bool = True) -> list[Step]:
    """Every step, in order. ``runs``: where trained runs are reused from (the quickstart's GPT, the dates
    translators); missing translators are trained small on the spot into a temporary directory (``train=False``:
    the page names the commands instead). MiniLM comes with qkv's ``minilm`` extra."""
    import tempfile

    from qkv.tour import models, seq2seq, toy

    runs = Path(runs)
    minilm = models._minilm()
    dates_runs = runs
    if train and not all(
        (runs / n / "checkpoints" / "latest").exists() for n in (seq2seq.ATTENTION_RUN, seq2seq.PLAIN_RUN)
    ):
        dates_runs = Path(tempfile.mkdtemp(prefix="qkv-tour-"))
        for name in (seq2seq.ATTENTION_RUN, seq2seq.PLAIN_RUN):  # reuse the one that exists
            if (runs / name / "checkpoints" / "latest").exists():
                (dates_runs / name).symlink_to((runs / name).resolve())
        seq2seq.train_small(dates_runs)
    makers: list[Callable[[], Step]] = [
        toy.i_go_home,
        lambda: _merged(toy.single_head(), models.adjective_head(*minilm)),
        toy.scaling,
        lambda: models.multi_head(*minilm),
        lambda: models.masking(runs),
        lambda: models.context_meaning(*minilm),
        lambda: seq2seq.bottleneck(dates_runs),
        lambda: _merged(toy.score_functions(), toy.local_alignment()),
        lambda: seq2seq.greedy_vs_beam(dates_runs),
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

    if lang not in LANGUAGES:
        raise ConfigError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    page = render(steps if steps is not None else build_tour(runs), lang)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
