"""Steps of the tour on the dates translators: the bottleneck of an encoder-decoder without attention, the
alignment of a Korean date, and greedy against beam search. They read the runs :func:`qkv.tour.runs.dates_runs`
finds or makes; without them the page says which commands make them."""

from __future__ import annotations

from pathlib import Path

import torch

import qkv
from qkv.tour.base import Step
from qkv.tour.figures import each_language, from_file, grid_words
from qkv.tour.runs import DATES_COMMANDS

__all__ = ["bottleneck", "greedy_vs_beam"]

KOREAN_DATE = "2021년 3월 5일 금요일"


def _load(run: Path | None):  # noqa: ANN202
    from qkv.runs import load_seq2seq

    return None if run is None else load_seq2seq(run)


def _exact_match(model, tokenizer, pairs) -> float:  # noqa: ANN001
    from qkv.training.seq2seq_eval import evaluate_pairs

    return evaluate_pairs(model, tokenizer, pairs)["exact_match"] / 100  # (a fraction: the page shows percent)


def _source(tokenizer, text: str) -> torch.Tensor:  # noqa: ANN001
    return torch.tensor([tokenizer.encode_source(text)])


def _decode(tokenizer, rows: torch.Tensor) -> list[str]:  # noqa: ANN001
    return [tokenizer.decode_target(row) for row in rows.tolist()]


def bottleneck(attention_run: Path | None, plain_run: Path | None, pairs: int = 200) -> Step:
    """Exact match on the long split (inputs longer than any seen in training) with and without attention (the
    runs of :func:`qkv.tour.runs.dates_runs`), and the alignment of a Korean date."""
    from qkv.data.tasks import task_splits

    attention, plain = _load(attention_run), _load(plain_run)
    if attention is None or plain is None:
        return Step("bottleneck", numbers={"commands": DATES_COMMANDS}, unavailable="runs")
    long_pairs = task_splits("dates", seed=0)["long"][:pairs]
    with_attention = _exact_match(attention[0], attention[1], long_pairs)
    without = _exact_match(plain[0], plain[1], long_pairs)
    model, tokenizer, _ = attention
    from qkv.decoding.translate import cross_attention
    from qkv.tokenizers.pair import EOS_ID

    src = _source(tokenizer, KOREAN_DATE)
    row = qkv.translate(model, src)[0].tolist()
    kept = row[: row.index(EOS_ID) + 1] if EOS_ID in row else row  # up to and with </s>
    weights = cross_attention(model, src, torch.tensor([kept]))[-1][0].mean(dim=0)  # (target, source)
    source_tokens = [tokenizer.source.piece(t) for t in src[0].tolist()]
    target_tokens = [tokenizer.target.piece(t) for t in kept]
    translation = tokenizer.decode_target(kept)
    title = f"{KOREAN_DATE} → {translation}"
    figure = each_language(lambda lang: from_file(lambda p: qkv.visualization.plot_alignment(
        weights, source_tokens, target_tokens, p, title=title, words=grid_words(lang))))  # fmt: skip
    return Step(
        "bottleneck",
        numbers={
            "with_attention": with_attention,
            "without": without,
            "pairs": len(long_pairs),
            "with_attention_pct": f"{100 * with_attention:.1f}%",
            "without_pct": f"{100 * without:.1f}%",
            "korean": KOREAN_DATE,
            "translation": translation,
        },  # fmt: skip
        figures=[("alignment", figure)],
    )


def greedy_vs_beam(attention_run: Path | None, source: str = "5 Mar 21", beams: int = 4) -> Step:
    """One input decoded greedily and by beam search, with every beam's candidate and its log-probability."""
    attention = _load(attention_run)
    if attention is None:
        return Step("beam", numbers={"commands": DATES_COMMANDS}, unavailable="runs")
    model, tokenizer, _ = attention
    src = _source(tokenizer, source)
    greedy = qkv.translate(model, src)
    beam = qkv.translate(model, src, strategy="beam", num_beams=beams, num_return_sequences=beams)
    greedy_score = float(qkv.score_translation(model, src, greedy).total[0])
    beam_scores = qkv.score_translation(model, src.repeat(beams, 1), beam).total.tolist()
    candidates = _decode(tokenizer, beam)
    return Step(
        "beam",
        numbers={
            "source": source,
            "greedy": _decode(tokenizer, greedy)[0],
            "greedy_score": greedy_score,
            "beam_best": candidates[0],
            "beam_best_score": beam_scores[0],
            "beams": beams,
        },  # fmt: skip
        tables=[
            (
                [("candidate", "후보"), ("log p", "로그 확률")],
                [[c, f"{s:.4f}"] for c, s in zip(candidates, beam_scores)],
            )
        ],
    )
