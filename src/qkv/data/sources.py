"""A corpus read as a stream: the files under a path, in pieces of bytes that end where documents end, decoded as
UTF-8 with every invalid byte counted and located.

A *document* ends after a blank line (two or more line breaks, ``\\n`` or ``\\r\\n``) and at the end of each file.
Pieces are cut only there (a line-break byte never occurs inside a multi-byte UTF-8 character, so a piece always
decodes on its own), which is what lets :mod:`qkv.data.prepare` resume from the byte a piece starts at. A document
longer than :data:`MAX_PIECE_BYTES` is cut at its last line break (or character) instead, and the piece says so.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkv.errors import ConfigError

__all__ = [
    "PIECE_BYTES",
    "DOCUMENT_END",
    "DOCUMENT_END_BYTES",
    "Piece",
    "SourceFile",
    "Utf8Decoder",
    "document_starts",
    "list_sources",
    "read_pieces",
    "sample_lines",
    "find_validation_start",
]

PIECE_BYTES = 4 << 20  # bytes read at a time: large enough that per-piece Python work is noise
MAX_PIECE_BYTES = 64 << 20  # a document longer than this is cut (at a line break) rather than held whole
DOCUMENT_END = re.compile(r"\n(?:\r?\n)+")  # a blank line: where a document ends
DOCUMENT_END_BYTES = re.compile(rb"\n(?:\r?\n)+")
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as ``surrogateescape`` decodes them


@dataclass(frozen=True)
class SourceFile:
    """One input file: its path, its name relative to the input (what the manifest records) and its size."""

    path: Path
    name: str
    size: int
    mtime_ns: int

    def fingerprint(self) -> dict[str, object]:
        return {"name": self.name, "bytes": self.size, "mtime_ns": self.mtime_ns}


def list_sources(path: str | Path) -> list[SourceFile]:
    """The non-empty files of ``path`` (a file, or every file under a directory in sorted order; hidden ones
    skipped). A missing path, a directory without files or input with no bytes at all is a :class:`ConfigError`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a UTF-8 text file or a directory of them")
    if path.is_file():
        files, root = [path], path.parent
    elif not path.is_dir():
        raise ConfigError(f"{path} is neither a regular file nor a directory; give a UTF-8 text file or a directory")
    else:
        root = path
        hidden = [p for p in path.rglob("*") if any(part.startswith(".") for part in p.relative_to(path).parts)]
        files = sorted(p for p in set(path.rglob("*")) - set(hidden) if p.is_file())
        if not files:
            raise ConfigError(f"{path} is a directory with no files in it; give a text file or a directory of them")
    sources = []
    for file in files:
        stat = file.stat()
        if stat.st_size:  # (an empty file holds no document)
            sources.append(SourceFile(file, file.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    if not sources:
        what = f"{path} is empty" if path.is_file() else f"every file under {path} is empty"
        raise ConfigError(f"{what}: there is no text to prepare")
    return sources


@dataclass(frozen=True)
class Piece:
    """Bytes of one file, ``data``, from byte ``start``; they end where a document ends unless ``continues``
    (a document longer than a piece goes on in the next one)."""

    file: int
    start: int
    data: bytes
    continues: bool

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def _last_document_end(data: bytes) -> int:
    """The end of the last blank-line run of ``data`` that is followed by text (a run that touches the end of
    ``data`` may go on in the next read), or 0."""
    stop = len(data.rstrip(b"\r\n"))
    start = max(data.rfind(b"\n\n", 0, stop), data.rfind(b"\n\r\n", 0, stop))
    if start < 0:
        return 0
    match = DOCUMENT_END_BYTES.match(data, start)
    return match.end() if match else 0


def _forced_cut(data: bytes) -> int:
    """Where to cut a document longer than a piece: after its last line break, else before a UTF-8 lead byte."""
    newline = data.rfind(b"\n")
    if newline > 0:
        return newline + 1
    cut = len(data) - 1
    while cut > 0 and 0x80 <= data[cut] < 0xC0:  # continuation bytes belong to the character before them
        cut -= 1
    return cut or len(data)


def read_pieces(
    sources: list[SourceFile],
    file: int = 0,
    offset: int = 0,
    piece_bytes: int = PIECE_BYTES,
    boundary: tuple[int, int] = (-1, -1),
) -> Iterator[Piece]:
    """The pieces of ``sources`` from byte ``offset`` of file number ``file`` on (a position a piece started at).
    No piece crosses ``boundary`` (file, byte): one ends there, the next starts there.

    Where a piece ends depends only on where it starts (the last document end within ``piece_bytes`` of it), so
    reading resumed from any piece's start yields exactly the pieces an uninterrupted read would."""
    for index in range(file, len(sources)):
        position = offset if index == file else 0
        with open(sources[index].path, "rb") as handle:
            while position < sources[index].size:
                # a piece ends at the file's end, or at the boundary when it starts before it
                size = boundary[1] if index == boundary[0] and position < boundary[1] else sources[index].size
                want = piece_bytes
                while True:
                    handle.seek(position)
                    data = handle.read(min(want, size - position))
                    if position + len(data) >= size:  # the end of the file (or the boundary) ends a document
                        piece = Piece(index, position, data, continues=False)
                        break
                    cut = _last_document_end(data)
                    if cut:
                        piece = Piece(index, position, data[:cut], continues=False)
                        break
                    if want >= MAX_PIECE_BYTES:  # a document longer than any piece: cut it where a line ends
                        piece = Piece(index, position, data[: _forced_cut(data)], continues=True)
                        break
                    want *= 2  # read on until the document ends
                yield piece
                position = piece.end


def _first_end_after(source: SourceFile, offset: int, pattern: re.Pattern[bytes]) -> int | None:
    """The end of ``pattern``'s first match in ``source`` at or after byte ``offset`` that has text after it."""
    with open(source.path, "rb") as handle:
        position = offset
        while position < source.size:
            handle.seek(position)
            data = handle.read(PIECE_BYTES)
            last = None
            for match in pattern.finditer(data):
                if match.end() < len(data):
                    return position + match.end()
                last = match
            if position + len(data) >= source.size:
                return None  # (a match at the very end has no text after it)
            # a match that touches the end of what was read may go on: read again from where it starts
            position += last.start() if last is not None and last.start() else len(data) - 1 if last else len(data)
    return None


def find_validation_start(sources: list[SourceFile], at: int) -> tuple[int, int]:
    """``(file, byte)`` where the validation split starts: the first document end after byte ``at`` of the whole
    input; else the start of the next file; else (a last file without blank lines) the first line end after it."""
    bounds = list(itertools.accumulate((s.size for s in sources), initial=0))
    index = bisect.bisect_right(bounds, at) - 1
    found = _first_end_after(sources[index], at - bounds[index], DOCUMENT_END_BYTES)
    if found is not None:
        return index, found
    if index + 1 < len(sources):
        return index + 1, 0
    found = _first_end_after(sources[index], at - bounds[index], re.compile(rb"\n"))
    if found is None:
        raise ConfigError(
            f"{sources[index].path} has no line break after byte {at - bounds[index]:,}, so no validation split can be "
            "cut from its end; give text with line breaks (documents end at blank lines) or more than one file"
        )
    return index, found


def document_starts(text: str) -> np.ndarray:
    """Where each document of ``text`` starts (0 first): after every blank-line run that has text after it.

    Text without carriage returns (nearly all of it) is scanned as an array, ~50x faster than the regular
    expression :data:`DOCUMENT_END`, which defines the same boundaries and handles the rest."""
    if "\r" in text:
        return np.array([0, *(m.end() for m in DOCUMENT_END.finditer(text) if m.end() < len(text))], dtype=np.int64)
    codes = (
        np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        if text.isascii()
        else np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (one element per character)
    )
    newline = codes == 10
    # character i starts a document when the two before it are line breaks and it is not one
    ends = np.flatnonzero(newline[:-2] & newline[1:-1] & ~newline[2:]) + 2
    return np.concatenate([[0], ends]).astype(np.int64)


class Utf8Decoder:
    """Decodes pieces as UTF-8. ``errors="strict"`` refuses the first file with bytes that are not UTF-8, saying
    how many it holds and where the first is; ``"replace"`` turns each into U+FFFD and counts them."""

    def __init__(self, sources: list[SourceFile], errors: str = "strict") -> None:
        if errors not in ("strict", "replace"):
            raise ConfigError(f"errors must be 'strict' or 'replace', got {errors!r}")
        self.sources, self.errors = sources, errors
        self.replaced = 0
        self.first_replaced: str | None = None  # "FILE, byte N"

    def decode(self, piece: Piece) -> str:
        try:
            return piece.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            first = piece.start + exc.start
        source = self.sources[piece.file]
        if self.errors == "strict":
            count = count_invalid_bytes(source.path)
            raise ConfigError(
                f"{source.path} is not UTF-8 text: {count} byte{'s' * (count != 1)} of it are not UTF-8, the first at "
                f"byte {first}; convert it (e.g. iconv -f latin1 -t utf-8) or pass --errors replace"
            )
        text = piece.data.decode("utf-8", errors="surrogateescape")
        self.replaced += len(_ESCAPED.findall(text))
        self.first_replaced = self.first_replaced or f"{source.name}, byte {first}"
        return _ESCAPED.sub("\ufffd", text)


def count_invalid_bytes(path: Path) -> int:
    """How many bytes of the file ``path`` are not part of valid UTF-8."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(PIECE_BYTES):
            count += len(_ESCAPED.findall(decoder.decode(block)))
    return count + len(_ESCAPED.findall(decoder.decode(b"", final=True)))


def sample_lines(sources: list[SourceFile], budget: int, block: int = 1 << 20) -> list[str]:
    """About ``budget`` bytes of whole lines, in ``block``-sized stretches spread evenly over the whole input (all
    of it when it is smaller): what a tokenizer trains on when the corpus is too large to train on whole."""
    total = sum(s.size for s in sources)
    if total <= budget:
        stretches = [(i, 0, s.size) for i, s in enumerate(sources)]
    else:
        count = max(1, budget // block)
        starts = [round(k * (total - block) / max(1, count - 1)) for k in range(count)]
        bounds = list(itertools.accumulate((s.size for s in sources), initial=0))
        stretches = []
        for start in starts:
            index = bisect.bisect_right(bounds, start) - 1
            stretches.append((index, start - bounds[index], min(block, sources[index].size)))
    lines: list[str] = []
    for index, start, size in stretches:
        with open(sources[index].path, "rb") as handle:
            handle.seek(start)
            data = handle.read(size)
        if start:  # from the first whole line on, up to the last whole line
            data = data[data.find(b"\n") + 1 :]
        if start + size < sources[index].size:
            data = data[: data.rfind(b"\n") + 1]
        lines += data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return lines
