"""Evaluating a sequence-to-sequence model: translate a split, then exact match, BLEU and chrF (sacrebleu), overall
and per source-length bucket."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sacrebleu
import torch
from torch import nn
from tqdm import tqdm

from qkv.data.pairs import pad_rows
from qkv.data.tasks import Pair
from qkv.decoding.translate import translate
from qkv.tokenizers.pair import PairTokenizer

__all__ = ["evaluate_pairs", "score_translations", "translate_texts"]

BUCKET_WIDTH = 5  # source characters per length bucket


def translate_texts(
    model: nn.Module,
    tokenizer: PairTokenizer,
    sources: list[str],
    *,
    strategy: str = "greedy",
    num_beams: int = 4,
    batch_size: int = 128,
    progress: bool = False,
) -> list[str]:
    """Translations of ``sources``, decoded in batches of similar length (padding costs decoding steps)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="translate", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        src = pad_rows([tokenizer.encode_source(sources[i]) for i in rows])
        src = src.to(next(model.parameters()).device)
        ids = translate(model, src, strategy=strategy, num_beams=num_beams)
        for i, row in zip(rows, ids.tolist()):
            out[i] = tokenizer.decode_target(row)
    return out


def _corpus_scores(hypotheses: list[str], references: list[str], bleu_tokenize: str) -> dict[str, float]:
    return {
        # percentages to 4 decimals, as they are reported (sacrebleu's 100.00000000000004 is 100)
        "exact_match": round(100.0 * sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references)), 4),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=bleu_tokenize).score, 4),
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 4),
    }


def score_translations(
    hypotheses: list[str], references: list[str], sources: list[str], bleu_tokenize: str = "13a"
) -> dict[str, Any]:
    """Exact match (%), corpus BLEU and chrF overall, and per bucket of source lengths (``"10-14"``: 10 to 14 chars).

    BLEU uses sacrebleu's ``bleu_tokenize`` (``13a`` splits words and punctuation; ``char`` suits scripts without
    spaces between the units that matter, such as Korean numerals).
    """
    result: dict[str, Any] = {"count": len(references), **_corpus_scores(hypotheses, references, bleu_tokenize)}
    groups: dict[int, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        groups[len(source) // BUCKET_WIDTH].append(i)
    result["buckets"] = {
        f"{b * BUCKET_WIDTH}-{b * BUCKET_WIDTH + BUCKET_WIDTH - 1}": {
            "count": len(rows),
            **_corpus_scores([hypotheses[i] for i in rows], [references[i] for i in rows], bleu_tokenize),
        }
        for b, rows in sorted(groups.items())
    }
    return result


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module,
    tokenizer: PairTokenizer,
    pairs: list[Pair],
    *,
    strategy: str = "greedy",
    num_beams: int = 4,
    bleu_tokenize: str = "13a",
    progress: bool = False,
) -> dict[str, Any]:
    """Translate every source of ``pairs`` and score the results against the targets."""
    sources = [s for s, _ in pairs]
    hypotheses = translate_texts(model, tokenizer, sources, strategy=strategy, num_beams=num_beams, progress=progress)
    return score_translations(hypotheses, [t for _, t in pairs], sources, bleu_tokenize)
