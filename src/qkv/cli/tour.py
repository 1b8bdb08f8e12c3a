"""``qkv tour``: the worked examples of the texts qkv implements, computed live, as one offline page."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="write a page that walks through the texts' examples, computed live (English or Korean)",
        description="Compute the texts' worked examples (self-attention on 'I go home', 3Blue1Brown's single head, "
        "the √d_k scale, multi-head attention, masking, context, the seq2seq bottleneck, score functions, greedy vs "
        "beam search, MADE and PixelCNN masks) and write them as one self-contained page. Trained runs under "
        "--runs are reused (the quickstart's GPT, the dates translators).",
    )
    p.add_argument("--lang", choices=("en", "ko"), default="en", help="the page's language (default en)")
    p.add_argument("--out", type=Path, default=Path("tour.html"), help="where to write the page (default tour.html)")
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("runs"),
        help="where trained runs are looked for (default runs): quickstart, dates-rnn, dates-rnn-none; what is "
        "missing is trained small into RUNS/tour/ and reused next time",
    )
    p.add_argument(
        "--no-training",
        action="store_true",
        help="train nothing (the missing runs would take about a minute in all); the steps that need them name the "
        "commands that make them instead",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.cli.common import HTML_SUFFIXES, check_output_dir, check_output_files, on_interrupt
    from qkv.tour import build_tour, write_tour
    from qkv.tour.runs import TOUR_DIR

    check_output_files({"out": HTML_SUFFIXES}, out=args.out)
    own = args.runs / TOUR_DIR  # what the tour trains itself goes here, and is reused next time
    if not args.no_training:
        check_output_dir("runs", own)
    kept = f"runs trained so far are kept in {own} and reused next time; the page was not written"
    with on_interrupt("making the tour", kept=kept if not args.no_training else "the page was not written"):
        steps = build_tour(args.runs, progress=not args.no_progress, train=not args.no_training)
        print(f"written: {write_tour(args.out, args.lang, steps)}")
    return 0
