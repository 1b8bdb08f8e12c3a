"""Steps of the tour that run real models: MiniLM (bundled) and a character GPT (the quickstart's run when present,
else the tour's own small one: :mod:`qkv.tour.runs`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

import qkv
from qkv.models.protocols import CausalLM
from qkv.tour.base import Step
from qkv.tour.figures import bars, each_language, from_file, grid_words, heatmap
from qkv.tour.runs import GPT_COMMANDS
from qkv.tour.text import figure_words

__all__ = ["context_meaning", "masking", "multi_head"]

ANIMAL = "The animal didn't cross the street because it was too tired"
KOREAN = ["그는 목표를 위해 서브하려고 테니스 공을 던졌다", "오늘 학교에서 과학 시험을 봤다"]


def _minilm():  # noqa: ANN202
    return qkv.load_pretrained("minilm").eval(), qkv.load_tokenizer("minilm")


def _attentions(model, tokenizer, text: str) -> tuple[list[torch.Tensor], list[str]]:  # noqa: ANN001
    ids, mask = tokenizer.batch([text])
    tokens = tokenizer.tokenizer.encode(text).tokens[: ids.shape[1]]
    with torch.no_grad(), qkv.capture_attention(model) as cap:
        model(ids, mask)
    return [w[0] for w in cap.all_layers()], tokens


def korean_coverage(tokenizer) -> list[dict]:  # noqa: ANN001
    """How MiniLM's English vocabulary splits the texts' Korean sentences: pieces, unknown pieces, words."""
    rows = []
    for sentence in KOREAN:
        tokens = tokenizer.tokenizer.encode(sentence).tokens[1:-1]
        rows.append({"sentence": sentence, "words": len(sentence.split()), "pieces": len(tokens),
                     "unknown": sum(t == "[UNK]" for t in tokens), "tokens": tokens})  # fmt: skip
    return rows


def _first_korean(rows: list[dict]) -> dict:
    first = rows[0]
    return {"": first["sentence"], "_words": first["words"], "_pieces": first["pieces"], "_unknown": first["unknown"]}


def multi_head(model=None, tokenizer=None) -> Step:  # noqa: ANN001
    """Several heads of one MiniLM layer on one sentence: each puts the weight of "it" somewhere else."""
    if model is None:
        model, tokenizer = _minilm()
    attentions, tokens = _attentions(model, tokenizer, ANIMAL)
    layer = 2
    it = tokens.index("it")
    targets = [tokens[int(attentions[layer][h, it].argmax())] for h in range(attentions[layer].shape[0])]
    patterns = attentions[layer].flatten(1)
    similarity = F.cosine_similarity(patterns[:, None], patterns[None], dim=-1)
    off_diagonal = similarity[~torch.eye(len(similarity), dtype=torch.bool)]
    heads = attentions[layer].shape[0]
    figure = each_language(lambda lang: from_file(  # two heads to a row: labels readable on the page at 1x
        lambda p: qkv.visualization.plot_attention(
            attentions, tokens, p, layer=layer, title=figure_words(lang, "heads", layer=layer, heads=heads), columns=2,
            words=grid_words(lang),
        )
    ))  # fmt: skip
    attn = qkv.visualization.capture.attention_modules(model)[layer]
    return Step(
        "multi_head",
        numbers={
            "layer": layer,
            "it_targets": targets,
            "it_places": dict(Counter(targets).most_common()),  # each place, and how many heads send "it" there
            "distinct_targets": len(set(targets)),
            "max_head_similarity": float(off_diagonal.max()),
            "heads": int(attn.num_heads),
            "head_dim": int(attn.head_dim),
            "out_proj": tuple(attn.out_proj.weight.shape),
            "sentence": ANIMAL,
            **{f"korean0{k}": v for k, v in _first_korean(korean_coverage(tokenizer)).items()},
        },
        figures=[("heads", figure)],
        tables=[
            (
                [("head", "헤드"), ("“it” looks most at", "“it”이 가장 많이 보는 곳")],
                [[str(h), t] for h, t in enumerate(targets)],
            )
        ],
        unavailable="korean_minilm",
    )


PROMPT = "ROMEO:\nBut soft, what light through yonder window b"


def masking(run: Path | None) -> Step:
    """The causal mask and next-token prediction in the character GPT of ``run`` (:func:`qkv.tour.runs.gpt_run`):
    rows of weights sum to one over the past only; the model's top-5 next characters and what temperature does to
    them."""
    from qkv.runs import load_causal_lm

    if run is None:
        return Step("masking", numbers={"commands": GPT_COMMANDS}, unavailable="runs")
    model, tokenizer, _ = load_causal_lm(run)
    source = str(run)
    ids = torch.tensor([tokenizer.encode(PROMPT)[-cast(CausalLM, model).config.max_seq_len :]])
    with torch.no_grad(), qkv.capture_attention(model) as cap:
        logits = model(ids).logits[0, -1].float()
    weights = cap.weights(0)[0, 0]  # layer 0, head 0: (seq, seq)
    future = torch.ones_like(weights, dtype=torch.bool).triu(1)
    shown = min(8, weights.shape[0])
    last = [tokenizer.decode([i]) for i in ids[0, -shown:].tolist()]
    temperatures = [0.5, 1.0, 2.0]
    top = torch.softmax(logits, -1).topk(5)
    chars = [tokenizer.decode([i]) for i in top.indices.tolist()]
    by_temperature: dict[float, list[float]] = {}
    entropy: list[float] = []
    for t in temperatures:
        p = torch.softmax(logits / t, -1)
        by_temperature[t] = p[top.indices].tolist()
        entropy.append(float(-(p * p.clamp_min(1e-30).log()).sum()))
    figure_mask = each_language(
        lambda lang: heatmap(
            weights[-shown:, -shown:],
            last,
            last,
            figure_words(lang, "last_rows", rows=shown),
            ylabel=figure_words(lang, "query"),
        )
    )
    series: dict[str, Sequence[float]] = {f"T = {t}": v for t, v in by_temperature.items()}
    figure_t = each_language(
        lambda lang: bars(
            [repr(c) for c in chars], series, figure_words(lang, "next_char"), figure_words(lang, "probability")
        )
    )
    return Step(
        "masking",
        numbers={
            "source": source,
            "prompt": PROMPT,
            "row_sums": weights.sum(-1),
            "row_sum_error": float((weights.sum(-1) - 1).abs().max()),
            "prompt_end": "…" + PROMPT[-24:].replace("\n", "⏎"),
            "future_max": float(weights[future].abs().max()) if future.any() else 0.0,
            "top5": list(zip(chars, top.values.tolist())),
            "temperatures": temperatures,
            "entropy": entropy,
        },
        figures=[("mask", figure_mask), ("temperature", figure_t)],
        tables=[
            (
                [("next", "다음 글자"), ("p", "확률")],
                [[repr(c), f"{p:.3f}"] for c, p in zip(chars, top.values.tolist())],
            )
        ],
    )


BANK = ["I deposited my pay at the bank.", "The bank raised its interest rates.", "We sat on the bank of the river."]


def _final_vector(model, tokenizer, sentence: str, word: str) -> torch.Tensor:  # noqa: ANN001
    ids, mask = tokenizer.batch([sentence])
    tokens = tokenizer.tokenizer.encode(sentence).tokens
    with torch.no_grad():
        hidden = model(ids, mask).last_hidden_state[0]
    return hidden[tokens.index(word)]


def context_meaning(model=None, tokenizer=None) -> Step:  # noqa: ANN001
    """One input embedding, three final-layer vectors: "bank" in three sentences; and daughter - son against
    woman - man in MiniLM's word embeddings."""
    if model is None:
        model, tokenizer = _minilm()
    table = model.embeddings.word.weight.detach()
    vocab = tokenizer.tokenizer

    def word(w: str) -> torch.Tensor:
        return table[vocab.token_to_id(w)]

    finals = torch.stack([_final_vector(model, tokenizer, s, "bank") for s in BANK])
    cos = F.cosine_similarity(finals[:, None], finals[None], dim=-1)
    analogy = float(F.cosine_similarity(word("daughter") - word("son"), word("woman") - word("man"), dim=0))
    control = float(F.cosine_similarity(word("daughter") - word("son"), word("table") - word("chair"), dim=0))
    labels = ["money (1)", "money (2)", "river"]
    return Step(
        "context",
        numbers={
            "cos": cos,
            "money_money": float(cos[0, 1]),
            "money_river": float(cos[:2, 2].max()),
            "analogy": analogy,
            "control": control,
            "sentences": BANK,
        },  # fmt: skip
        figures=[("bank", each_language(lambda lang: heatmap(cos, labels, labels, figure_words(lang, "bank"))))],
    )


FLUFFY_TEXT = "a fluffy blue creature roamed the verdant forest"


def adjective_head(model, tokenizer) -> Step:  # noqa: ANN001
    """The head of MiniLM whose nouns look most at their own adjectives in the fluffy-creature sentence, found by
    trying every head: the mean over the two nouns of the weight each puts on its adjectives' word pieces."""
    attentions, tokens = _attentions(model, tokenizer, FLUFFY_TEXT)
    pieces = {"creature": ["fluffy", "blue"], "forest": ["ve", "##rdan", "##t"]}
    index = {t: i for i, t in enumerate(tokens)}
    scores = torch.stack([
        torch.stack([a[:, index[noun], [index[p] for p in adjectives]].sum(-1) for noun, adjectives in pieces.items()])
        .mean(0)
        for a in attentions
    ])  # (layers, heads)  # fmt: skip
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    figure = each_language(lambda lang: heatmap(
        attentions[layer][head], tokens, tokens, figure_words(lang, "minilm_head", layer=layer, head=head),
        numbers=False, ylabel=figure_words(lang, "query")))  # fmt: skip
    return Step(
        "single_head",
        numbers={
            "minilm_layer": layer,
            "minilm_head": head,
            "minilm_score": float(scores.max()),
            "minilm_median": float(scores.median()),
            "minilm_scores": scores,
        },  # fmt: skip
        figures=[("minilm", figure)],
    )
