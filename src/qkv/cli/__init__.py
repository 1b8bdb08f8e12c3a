"""The ``qkv`` command line: one entry point, one verb per job.

Every user-facing problem (a :class:`qkv.errors.QkvError`, a missing file) becomes one line on stderr and exit code 2;
``--debug`` shows the traceback instead. Ctrl-C, from the first instant on (PyTorch's import takes a second), exits
with code 130 and one line that says what was interrupted and what was kept.

The verbs are imported inside :func:`main`, after the interrupt handling is in place: importing this package loads
neither PyTorch nor any verb.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qkv.errors import QkvError

__all__ = ["main"]

VERBS = (  # name -> module qkv.cli.<name>, in the order --help lists them
    "train",
    "prepare",
    "generate",
    "translate",
    "quickstart",
    "embed",
    "attention",
    "heads",
    "sample",
    "field",
    "tour",
    "configs",
    "bench",
)

# What Ctrl-C leaves behind when a verb says nothing more precise (by raising KeyboardInterrupt with a message).
NOTHING_KEPT = "nothing was written"


class _Formatter(argparse.HelpFormatter):
    """argparse's help, wrapped without breaking a hyphenated name (``pixel-transformer``, ``--max-new-tokens``)
    across two lines."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`_Formatter` (its subparsers, the verbs, are of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qkv",
        description="qkv: the attention mechanism, complete, exact and fast, on PyTorch.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something goes wrong")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        importlib.import_module(f"qkv.cli.{name}").add_parser(verbs, name)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, except that texts after an option (``qkv translate RUN --min-new-tokens 3 'March 5'``) join
    a verb's TEXT list: argparse fills a ``nargs="*"`` positional once, before the options, and would refuse them."""
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "texts", None), list) and not any(e.startswith("-") for e in extras):
        args.texts += extras
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _verb_of(argv: Sequence[str]) -> str:
    """The verb in ``argv`` (for messages before the parser exists): the first word that is one."""
    return next((word for word in argv if word in VERBS), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _verb_of(argv)
    prefix = f"qkv {verb}".rstrip()
    debug = "--debug" in argv[: argv.index(verb) if verb else len(argv)]
    try:
        with _ctrl_c_after_imports():
            parser = build_parser()  # (imports every verb, and with them PyTorch, NumPy and the tokenizers)
        args = _parse(parser, argv)
        return int(args.run(args) or 0)
    except (QkvError, FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        if debug:
            raise
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped reading (qkv configs | head): Python's documented remedy, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        if debug:
            raise
        return _interrupted(prefix, exc)
    except Exception as exc:
        # Python 3.11 wraps what is raised while it makes a class (a descriptor's __set_name__) in a RuntimeError:
        # a Ctrl-C that lands there, in a module imported during the first second, arrives as one
        interrupt = _ctrl_c_behind(exc)
        if debug or interrupt is None:
            raise
        return _interrupted(prefix, interrupt)


@contextmanager
def _ctrl_c_after_imports() -> Iterator[None]:
    """Hold a Ctrl-C pressed inside the block and raise it when the block ends.

    The first second of every verb imports C extensions, which do not all let a KeyboardInterrupt through: PyTorch
    imports NumPy from C++ and clears any error there (the command then ran on, or died on a half-imported numpy);
    NumPy turns one raised inside its C import into an ``ImportError`` that no longer names it. Nothing is written
    while importing, so a press waits until the imports are done and is then handled as anywhere else.
    """
    pressed = False

    def hold(signum: int, frame: object) -> None:
        nonlocal pressed
        pressed = True

    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield  # (ignored by whoever started us, e.g. a background job; or no signals here at all)
        return
    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _interrupted(prefix: str, exc: KeyboardInterrupt) -> int:
    """Say what was interrupted; exit code 130."""
    # a verb says what it was doing and what it kept (qkv.cli.common.on_interrupt); otherwise nothing was kept
    message = str(exc) or NOTHING_KEPT
    print(f"{prefix}: interrupted (Ctrl-C){' ' if message.startswith('while ') else '; '}{message}", file=sys.stderr)
    return 130


def _ctrl_c_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among the exceptions that caused ``exc``, or None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
