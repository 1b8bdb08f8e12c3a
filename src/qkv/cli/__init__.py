"""The ``qkv`` command line: one entry point, one verb per job.

Every user-facing problem (a :class:`qkv.errors.QkvError`, a missing file) becomes one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qkv.cli import attention, bench, embed, field, generate, heads, quickstart, sample, tour, train, translate
from qkv.errors import QkvError

__all__ = ["main"]

VERBS = {
    "train": train,
    "generate": generate,
    "translate": translate,
    "quickstart": quickstart,
    "embed": embed,
    "attention": attention,
    "heads": heads,
    "sample": sample,
    "field": field,
    "tour": tour,
    "bench": bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv",
        description="qkv: the attention mechanism, complete, exact and fast, on PyTorch.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something goes wrong")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, module in VERBS.items():
        module.add_parser(verbs, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (QkvError, FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        if args.debug:
            raise
        print(f"qkv {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"qkv {args.verb}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
