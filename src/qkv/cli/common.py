"""Pieces the CLI verbs share: options, output checks, Ctrl-C messages and turning a prompt into token ids (runs are
loaded by :mod:`qkv.runs`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from qkv.devices import INFERENCE_DTYPES
from qkv.errors import ConfigError
from qkv.tokenizers import Tokenizer

__all__ = [
    "add_device_option",
    "check_output_dir",
    "check_output_files",
    "encode_prompt",
    "non_text_tokens",
    "on_interrupt",
    "qkv_command",
    "resume_hint",
    "warn",
]


HTML_SUFFIXES = (".html", ".htm")


def add_device_option(
    p: argparse.ArgumentParser, dtype: bool = False, default: str | None = "auto", dtype_default: str = "fp32"
) -> None:
    """``--device`` (and with ``dtype``, ``--dtype``) for a verb that runs a model."""
    p.add_argument(
        "--device",
        default=default,
        help="where the model runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
        f"({'default: ' + default if default else 'default: the config'})",
    )
    if dtype:
        p.add_argument(
            "--dtype",
            choices=INFERENCE_DTYPES,
            default=dtype_default,
            help=f"the weights' precision for inference (default {dtype_default}; bf16/fp16 halve memory and are "
            "faster where the device has units for them; int8: weight-only int8 linear layers on the CPU, a quarter "
            "of fp32's bytes; auto = bf16 where native, else fp32)",
        )


def qkv_command() -> str:
    """How the user called qkv, for hints they can paste back: ``.venv/bin/qkv`` when that is what they typed (the
    environment need not be active), else ``qkv``."""
    called = sys.argv[0] if sys.argv else ""
    return shlex.quote(called) if Path(called).name == "qkv" else "qkv"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextmanager
def on_interrupt(doing: str, kept: str = "nothing was written") -> Iterator[None]:
    """Ctrl-C inside the block says what was going on and what was kept: ``qkv VERB: interrupted (Ctrl-C) while
    {doing}; {kept}``. A message raised from within (the Trainer's, naming its checkpoint) is kept, with ``doing``
    put in front."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(f"while {doing}; {str(exc) or kept}") from None


@contextmanager
def resume_hint(command: str) -> Iterator[None]:
    """A Trainer stopped by Ctrl-C names its checkpoint; add the command that resumes from it."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if not str(exc):
            raise
        raise KeyboardInterrupt(f"{exc}; {command} resumes it") from None


def _blocked_by_a_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is a file (so no directory can be made there), if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _check_writable(option: str, path: Path, what: str) -> None:
    """Refuse ``path`` (a file or a directory to create) when its nearest existing directory takes no new file: a
    probe file is made there and removed, so permissions, read-only mounts and pseudo file systems (``/proc``) are
    all found before any work, and the message names the user's path, never the probe's."""
    existing = next((p for p in (path, *path.parents) if p.is_dir()), Path.cwd())
    try:
        handle, probe = tempfile.mkstemp(prefix=".qkv-probe-", dir=existing)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{option} {path}: {what} cannot be written in {existing} ({reason.lower()})") from None
    os.close(handle)
    os.unlink(probe)


def check_output_files(suffixes: dict[str, tuple[str, ...]] | None = None, **flags: Path | None) -> None:
    """Refuse, before any work is done, an output file that cannot be written where it is asked for: a directory, a
    path under an existing file, a directory that takes no new file (read-only, ``/proc``), or (``suffixes={"png":
    (".png", ...)}``) a name of a format that is not written. Missing parent directories are fine: they are created
    (as ``--out`` creates a run directory).

    ``check_output_files({"html": (".html",)}, html=args.html)``; an upper-case name is a positional argument's
    (``FILE=path``), shown as it is.
    """
    for flag, path in flags.items():
        if path is None:
            continue
        option = flag if flag.isupper() else "--" + flag.replace("_", "-")  # a positional (FILE) or an option
        if path.is_dir():
            raise ConfigError(f"{option} {path} is a directory; give a file name inside it, e.g. {path / 'out'}")
        blocker = _blocked_by_a_file(path)
        if blocker is not None:
            raise ConfigError(f"{option} {path}: {blocker} is a file, so nothing can be written under it")
        allowed = (suffixes or {}).get(flag)
        if allowed and path.suffix.lower() not in allowed:
            raise ConfigError(
                f"{option} {path}: the name must end in {', '.join(allowed)} (got {path.suffix or 'no suffix'})"
            )
        _check_writable(option, path, "the file")


def check_output_dir(flag: str, path: Path, what: str = "run") -> None:
    """Refuse an output directory (a run's, by default) that is an existing file, lies under one, or cannot be
    written (``check_output_dir("out", args.out)``)."""
    option = "--" + flag.replace("_", "-")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; a {what} needs a directory (a new or existing one)")
    blocker = _blocked_by_a_file(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, so no directory can be made under it")
    _check_writable(option, path, f"the {what}")


def non_text_tokens(tokenizer: object) -> tuple[int, ...]:
    """Ids a tokenizer has that stand for no text (a character tokenizer's ``<unk>``, which decodes to U+FFFD):
    never sampled by the verbs, which print text."""
    unk = getattr(tokenizer, "unk_id", None)
    return (unk,) if isinstance(unk, int) else ()


def encode_prompt(
    tokenizer: Tokenizer, prompt: str, context: int, hint: str = "give some text to continue, e.g. --prompt 'Ham.'"
) -> torch.Tensor:
    """``(1, n)`` ids of ``prompt``; an empty prompt or unknown characters are errors (``hint`` says what to give
    instead of nothing, in the words of the calling verb), a long one is cut on the left."""
    if not prompt:
        raise ConfigError(f"the prompt is empty: {hint}")
    unknown = getattr(tokenizer, "unknown_characters", _nothing_unknown)(prompt)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise ConfigError(
            f"the prompt has characters the model never saw in training: {shown}; remove them "
            "(a character-level model has no id for them)"
        )
    ids = tokenizer.encode(prompt)
    if len(ids) > context:
        warn(f"the prompt has {len(ids)} tokens, more than the context of {context}; keeping the last {context}")
        ids = ids[-context:]
    return torch.tensor([ids], dtype=torch.long)


def _nothing_unknown(_text: str) -> list[str]:
    """A tokenizer without ``unknown_characters`` (bytes-level BPE) knows every character."""
    return []
