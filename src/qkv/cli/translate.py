"""``qkv translate``: run a trained sequence-to-sequence model on text, optionally drawing its alignment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from qkv.cli.common import add_device_option
from qkv.cli.generate import SHARED_FLAGS
from qkv.errors import ConfigError

__all__ = ["add_parser"]


#: the GenerationConfig fields qkv translate takes as flags: qkv generate's shared ones, and min_new_tokens (a
#: translation always knows its end token). Its output is one line per text, so one sequence each.
TRANSLATE_FLAGS = (*SHARED_FLAGS, "min_new_tokens")


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="translate text with a trained seq2seq model (RNN or Transformer)",
        description="Translate each TEXT (or each line of --file) with a model trained by `qkv train` on a seq2seq "
        "config (configs/*-rnn.toml, configs/*-transformer.toml) and print one result per line. "
        "--show-attention draws the source x target alignment: where each output token looked.",
    )
    p.add_argument("checkpoint", type=Path, help="a run directory (from qkv train) or a checkpoint directory")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="what to translate, e.g. 'March 5, 2021'")
    p.add_argument("--file", type=Path, help="a UTF-8 file with one text per line (instead of, or after, TEXT)")
    from qkv.cli.decoding_flags import add_decoding_flags

    add_decoding_flags(p, TRANSLATE_FLAGS, {"seed": 0})
    p.add_argument(
        "--scores",
        action="store_true",
        help="after each output, a tab and its mean log-probability per token (closer to 0 = surer; a guess scores "
        "far lower)",
    )
    p.add_argument(
        "--show-attention",
        type=Path,
        metavar="PNG",
        help="write the alignment grid (target rows x source columns; a Transformer's last layer, mean of heads) "
        "here; with several texts, one file each: NAME-1.png, NAME-2.png, ...",
    )
    p.add_argument(
        "--html",
        type=Path,
        metavar="PAGE",
        help="write the interactive page here: every layer and head of the cross-attention (target tokens looking "
        "at source tokens) and the alignment; it works offline. With several texts: NAME-1.html, ...",
    )
    add_device_option(p, dtype=True)
    p.set_defaults(run=run)


def _texts(args: argparse.Namespace) -> list[str]:
    from qkv.data.text import read_text_file

    texts = list(args.texts)
    if args.file is not None:
        texts += [line.strip() for line in read_text_file(args.file).splitlines() if line.strip()]
    if not texts:
        raise ConfigError("nothing to translate: give a TEXT argument (e.g. 'March 5, 2021') or --file")
    for text in texts:
        if not text.strip():
            raise ConfigError("a TEXT is empty: give something to translate, e.g. 'March 5, 2021'")
    return texts


CHUNK = 64  # texts decoded together: one batch each, printed before the next is decoded


def _attention_kinds(model, src_ids, out_ids, source: list[str], target: list[str]) -> list:  # noqa: ANN001
    """Every kind of attention a seq2seq model used to produce ``out_ids`` (1, m) from ``src_ids`` (1, n): an
    encoder-decoder Transformer's encoder self-, decoder self- and cross-attention, with scores and the neuron view's
    vectors from its hook points (the decoder re-run on its own outputs, as :func:`cross_attention` does); an RNN's
    attention over the source."""
    import torch

    from qkv.decoding.stepper import decoding_mode
    from qkv.decoding.translate import cross_attention
    from qkv.devices import model_device
    from qkv.tokenizers.pair import BOS_ID
    from qkv.visualization.capture import attention_modules, capture_attention
    from qkv.visualization.html import AttentionKind
    from qkv.visualization.kinds import attention_kinds

    if not attention_modules(model):  # an RNN: one layer, one head of attention over the source
        layers = [w[0] for w in cross_attention(model, src_ids, out_ids)]
        return [AttentionKind("cross-attention", layers, source, target)]
    inputs = torch.cat([torch.full((1, 1), BOS_ID), out_ids[:, :-1]], dim=1)
    device = model_device(model)
    with decoding_mode(model), capture_attention(model, scores=True, vectors=True) as capture:
        model(src_ids.to(device), inputs.to(device))
    return attention_kinds(capture, source, target)


def _numbered(path: Path, index: int, count: int, suffix: str) -> Path:
    """``path`` itself for one text; ``NAME-1.png``, ``NAME-2.png``, ... for several."""
    if count == 1:
        return path
    return path.with_name(f"{path.stem}-{index + 1}{path.suffix or suffix}")


def run(args: argparse.Namespace) -> int:
    import torch

    from qkv.cli.common import HTML_SUFFIXES, check_output_files, warn
    from qkv.cli.decoding_flags import decoding_config
    from qkv.cli.generate import check_generation_args
    from qkv.data.pairs import pad_rows
    from qkv.decoding.translate import NO_ALIGNMENT, translate
    from qkv.models.protocols import Seq2SeqLM
    from qkv.runs import load_seq2seq
    from qkv.tokenizers.pair import EOS_ID
    from qkv.visualization import Explorer
    from qkv.visualization.grid import IMAGE_SUFFIXES, plot_alignment

    check_generation_args(args)
    config = decoding_config(args, TRANSLATE_FLAGS)  # every flag checked before the model loads
    texts = _texts(args)
    check_output_files(
        {"show_attention": IMAGE_SUFFIXES, "html": HTML_SUFFIXES}, show_attention=args.show_attention, html=args.html
    )
    model, tokenizer, _ = load_seq2seq(args.checkpoint, args.device, args.dtype)
    if (args.show_attention or args.html) and getattr(model.config, "attention", None) == "none":
        raise ConfigError(f"{NO_ALIGNMENT}; drop --show-attention/--html")
    seq2seq = cast(Seq2SeqLM, model)  # (a SEQ2SEQ family)
    limit = seq2seq.source_limit
    encoded: dict[int, list[int]] = {}  # text index -> source ids, for the texts that can be translated
    problems: dict[int, str] = {}
    for i, text in enumerate(texts):
        unknown = tokenizer.source.unknown(text)
        ids = tokenizer.encode_source(text) if not unknown else []
        if unknown:
            shown = ", ".join(repr(p) for p in unknown[:10])
            problems[i] = f"{text!r} has pieces the model never saw in training: {shown}; remove or replace them"
        elif limit is not None and len(ids) > limit:
            problems[i] = f"{text!r} is {len(ids)} tokens long (with </s>); this model reads at most {limit}"
        else:
            encoded[i] = ids
    if len(problems) == len(texts):  # nothing to translate: one clear error (the first text's)
        raise ConfigError(problems[0] if len(texts) == 1 else f"no text could be translated; the first: {problems[0]}")
    longest = args.max_new_tokens if args.max_new_tokens is not None else seq2seq.config.max_target_len
    if config.min_new_tokens > longest:  # </s> would be barred to the end: every output cut off, and no sign of it
        warn(f"--min-new-tokens {config.min_new_tokens} is more than the {longest} tokens an output may have here; "
             f"using {longest}")  # fmt: skip
        config = config.replace(min_new_tokens=longest)
    results: dict[int, list[int]] = {}
    printed = 0
    try:  # a chunk of texts at a time, printed as it is done: Ctrl-C keeps the lines printed so far
        for first in range(0, len(texts), CHUNK):
            chunk = [i for i in range(first, min(first + CHUNK, len(texts))) if i in encoded]
            scores: dict[int, str] = {}
            if chunk:
                sources = pad_rows([encoded[i] for i in chunk])
                out = translate(model, sources, config)
                results.update(zip(chunk, out.tolist()))
                if args.scores:
                    from qkv.decoding.scores import score_translation

                    means = score_translation(model, sources, out).mean.tolist()
                    scores = {i: f"\t{mean:.4g}" for i, mean in zip(chunk, means)}
            lines = []  # one line per text, in order: a skipped text leaves its line empty
            for i in range(first, min(first + CHUNK, len(texts))):
                if i in problems:
                    print(f"qkv translate: error: {problems[i]} (skipped: its output line is empty)", file=sys.stderr)
                lines.append((tokenizer.decode_target(results[i]) + scores.get(i, "")) if i in results else "")
            # the chunk in one write, counted as it lands: a Ctrl-C is then never between a line and its count
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            printed += len(lines)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"while translating; {printed} of {len(texts)} lines were translated and printed above"
        ) from None
    if args.show_attention is not None or args.html is not None:
        for i, ids in encoded.items():
            row = results[i]
            kept = row[: row.index(EOS_ID) + 1] if EOS_ID in row else row  # up to and with </s>
            source = [tokenizer.source.piece(t) for t in ids]
            target = [tokenizer.target.piece(t) for t in kept]
            kinds = _attention_kinds(model, torch.tensor([ids]), torch.tensor([kept]), source, target)
            layers = next(k for k in kinds if k.name == "cross-attention").weights
            weights = layers[-1].mean(dim=0)  # the alignment: last layer, mean of heads
            title = f"{texts[i]!r} -> {tokenizer.decode_target(kept)!r}"
            if args.show_attention is not None:
                path = _numbered(args.show_attention, i, len(texts), ".png")
                plot_alignment(weights, source, target, path, title=title)
                print(f"alignment: {path}")
            if args.html is not None:
                path = _numbered(args.html, i, len(texts), ".html")
                focus = (len(kinds) - 1, len(layers) - 1, 0)  # the cross-attention's last layer
                Explorer.of(kinds, title=title, focus=focus, alignment=(source, target, weights)).save(path)
                print(f"explorer:  {path} (open it in a browser; it works offline)")
    return 2 if problems else 0
