"""Steps of the tour on the dates translators: the bottleneck of an encoder-decoder without attention, the
alignment of a Korean date, and greedy against beam search. They read trained runs (configs/dates-rnn.toml with
and without attention) when present; otherwise :func:`train_small` makes small ones on the spot (300 steps each,
about half a minute on 2 cores), and with ``train=False`` the page says which commands make them."""

from __future__ import annotations

from pathlib import Path

import torch

import qkv
from qkv.tour.base import Step
from qkv.tour.figures import from_file

__all__ = ["ATTENTION_RUN", "PLAIN_RUN", "bottleneck", "greedy_vs_beam"]

ATTENTION_RUN = "dates-rnn"
PLAIN_RUN = "dates-rnn-none"
KOREAN_DATE = "2021년 3월 5일 금요일"
TRAIN_COMMANDS = (
    "qkv train configs/dates-rnn.toml --out runs/dates-rnn; "
    "qkv train configs/dates-rnn.toml --set model.attention=none --out runs/dates-rnn-none"
)


# configs/dates-rnn.toml's model and optimiser, with a small budget (the repository's configs are not installed)
SMALL = {
    "kind": "rnn-seq2seq",
    "model": {"embed_dim": 64, "hidden_dim": 128, "attention": "luong", "score": "general", "dropout": 0.0},
    "data": {"task": "dates", "train_size": 3000, "eval_size": 20},
    "train": {"steps": 300, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50, "weight_decay": 0.0,
              "eval_interval": 300, "eval_iters": 1, "checkpoint_interval": 300},
}  # fmt: skip


def train_small(runs: Path) -> None:
    """Train the two dates translators the steps read (300 steps each, seconds), into ``runs``."""
    from qkv.training import Trainer
    from qkv.training.config import RunConfig, apply_overrides
    from qkv.training.seq2seq import build_seq2seq

    for name, extra in ((ATTENTION_RUN, []), (PLAIN_RUN, ["model.attention=none"])):
        if (runs / name / "checkpoints" / "latest").exists():
            continue
        config = apply_overrides(RunConfig.from_dict(SMALL), extra)
        model, task, tokenizer = build_seq2seq(config)
        Trainer(model, task, config.train, runs / name, tokenizer, config.to_dict(), progress=False).fit()


def _load(runs: Path, name: str):  # noqa: ANN202
    from qkv.cli.common import load_seq2seq

    if not (runs / name / "checkpoints" / "latest").exists():
        return None
    model, tokenizer, info = load_seq2seq(runs / name)
    return model, tokenizer, info


def _exact_match(model, tokenizer, pairs) -> float:  # noqa: ANN001
    from qkv.training.seq2seq_eval import evaluate_pairs

    return evaluate_pairs(model, tokenizer, pairs)["exact_match"] / 100  # (a fraction: the page shows percent)


def _source(tokenizer, text: str) -> torch.Tensor:  # noqa: ANN001
    return torch.tensor([tokenizer.encode_source(text)])


def _decode(tokenizer, rows: torch.Tensor) -> list[str]:  # noqa: ANN001
    return [tokenizer.decode_target(row) for row in rows.tolist()]


def bottleneck(runs: Path = Path("runs"), pairs: int = 200) -> Step:
    """Exact match on the long split (inputs longer than any seen in training) with and without attention, and
    the alignment of a Korean date."""
    from qkv.data.tasks import task_splits

    attention, plain = _load(runs, ATTENTION_RUN), _load(runs, PLAIN_RUN)
    if attention is None or plain is None:
        return Step("bottleneck", numbers={"commands": TRAIN_COMMANDS}, unavailable="runs")
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
    figure = from_file(lambda p: qkv.visualization.plot_alignment(
        weights, source_tokens, target_tokens, p, title=f"{KOREAN_DATE} → {translation}"))  # fmt: skip
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


def greedy_vs_beam(runs: Path = Path("runs"), source: str = "5 Mar 21", beams: int = 4) -> Step:
    """One input decoded greedily and by beam search, with every beam's candidate and its log-probability."""
    attention = _load(runs, ATTENTION_RUN)
    if attention is None:
        return Step("beam", numbers={"commands": TRAIN_COMMANDS}, unavailable="runs")
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
        tables=[(["candidate", "log p"], [[c, f"{s:.4f}"] for c, s in zip(candidates, beam_scores)])],
    )
