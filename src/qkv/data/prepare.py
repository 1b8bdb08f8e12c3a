"""``qkv prepare``: a text corpus of any size tokenized once into memory-mappable shards (:mod:`qkv.data.shards`).

The input streams through in pieces that end where documents end (:mod:`qkv.data.sources`), so memory stays
bounded whatever the corpus' size. The validation split is the corpus' tail by document: it starts at the first
document boundary after ``1 - val_fraction`` of the input's bytes (the split nanoGPT makes, moved to where a
document ends, so no document is in both; a last file without blank lines is cut at a line end instead).

The tokenizer is built first: ``char`` from every character of the input (one cheap pass), ``bpe[:VOCAB]``
(byte-level BPE) trained on ``sample_bytes`` of whole lines spread evenly over the input, or a tokenizer file given
as is. Each document is encoded on its own.

Everything is a function of the input and the settings: run twice, it writes identical files; interrupted (Ctrl-C,
a full disk), it keeps every finished shard and the next run resumes after the last one.
"""

from __future__ import annotations

import errno
import itertools
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qkv.data.encoding import PieceEncoder
from qkv.data.hub import EXPORT, export_dataset, exported_fingerprint, is_dataset
from qkv.data.shards import FORMAT, TOKENIZER, PreparedCorpus, ShardWriter, read_manifest, write_manifest
from qkv.data.sources import (
    PIECE_BYTES,
    Piece,
    SourceFile,
    Utf8Decoder,
    find_validation_start,
    list_sources,
    read_pieces,
    sample_lines,
)
from qkv.errors import ConfigError, DiskFullError
from qkv.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer_file

__all__ = ["PrepareSettings", "prepare"]

UINT16_VOCABULARY = 1 << 16
DEFAULT_BPE_VOCABULARY = 8192


@dataclass(frozen=True)
class PrepareSettings:
    """How a corpus is prepared; recorded in the manifest, and a resumed run must use the same."""

    tokenizer: str = "char"  # char | bpe | bpe:VOCAB | a tokenizer file (tokenizer.json)
    val_fraction: float = 0.1  # the tail of the input (by document) that validates
    errors: str = "strict"  # bytes that are not UTF-8: strict (refuse) | replace (U+FFFD, counted)
    dtype: str = "auto"  # auto (uint16 when the vocabulary fits, else uint32) | uint16 | uint32
    shard_tokens: int = 1 << 26  # a shard closes at the first document end after this many tokens
    sample_bytes: int = 32 << 20  # BPE trains on this much of the input, spread over all of it

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"the validation fraction must be in (0, 1), got {self.val_fraction}")
        if self.errors not in ("strict", "replace"):
            raise ConfigError(f"--errors must be strict or replace, got {self.errors!r}")
        if self.dtype not in ("auto", "uint16", "uint32"):
            raise ConfigError(f"--dtype must be auto, uint16 or uint32, got {self.dtype!r}")
        if self.shard_tokens < 1:
            raise ConfigError(f"--shard-tokens must be a positive number of tokens, got {self.shard_tokens}")
        if self.sample_bytes < 1:
            raise ConfigError(f"the BPE sample must be at least a byte, got {self.sample_bytes} bytes")
        bpe_vocabulary(self.tokenizer)  # (raises on a malformed bpe:VOCAB)


def bpe_vocabulary(spec: str) -> int | None:
    """The vocabulary size a ``bpe`` / ``bpe:VOCAB`` tokenizer spec asks for, or None for other specs."""
    if spec != "bpe" and not spec.startswith("bpe:"):
        return None
    size = spec.partition(":")[2] or str(DEFAULT_BPE_VOCABULARY)
    if not size.isdigit() or not 257 <= int(size) <= 1 << 22:
        raise ConfigError(f"a BPE vocabulary must be a whole number from 257 (the bytes and more) up, got {spec!r}")
    return int(size)


def _token_dtype(setting: str, vocab_size: int) -> str:
    fits = vocab_size <= UINT16_VOCABULARY
    if setting == "uint16" and not fits:
        raise ConfigError(
            f"a vocabulary of {vocab_size:,} ids does not fit uint16 (at most {UINT16_VOCABULARY:,}); use --dtype "
            "uint32 or auto"
        )
    return "uint16" if setting == "auto" and fits else ("uint32" if setting == "auto" else setting)


def _char_vocabulary(sources: list[SourceFile], decoder: Utf8Decoder, progress: bool) -> CharTokenizer:
    """A character tokenizer of every character of the input (one pass; also where bad UTF-8 is found first)."""
    seen: set[str] = set()
    known = b""  # the ASCII bytes seen so far: deleting them (bytes.translate, memory speed) leaves only new ones
    with tqdm(total=sum(s.size for s in sources), unit="B", unit_scale=True, desc="characters", disable=not progress,
              leave=False) as bar:  # fmt: skip
        for piece in read_pieces(sources):
            if piece.data.isascii():
                new = piece.data.translate(None, known)
                if new:
                    seen |= set(new.decode("ascii"))
                    known = "".join(sorted(c for c in seen if c.isascii())).encode("ascii")
            else:
                seen |= set(decoder.decode(piece))
            bar.update(len(piece.data))
    return CharTokenizer(sorted(seen))


def _build_tokenizer(
    spec: str, given: Tokenizer | None, sources: list[SourceFile], settings: PrepareSettings, progress: bool
) -> Tokenizer:
    if given is not None:
        return given
    if spec == "char":
        return _char_vocabulary(sources, Utf8Decoder(sources, settings.errors), progress)
    vocabulary = bpe_vocabulary(spec)
    if vocabulary is not None:
        if progress:
            mb = settings.sample_bytes >> 20
            print(f"training a byte-level BPE of {vocabulary:,} tokens on up to {mb} MB of the input", flush=True)
        return BPETokenizer.train_lines(sample_lines(sources, settings.sample_bytes), vocab_size=vocabulary)
    if not Path(spec).is_file():
        raise ConfigError(f"unknown tokenizer {spec!r}: give char, bpe, bpe:VOCAB or a tokenizer.json file")
    return load_tokenizer_file(spec)


def prepare(
    source: str | Path,
    out: str | Path,
    settings: PrepareSettings | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    split: str = "train",
    text_column: str = "text",
) -> PreparedCorpus:
    """Prepare the text of ``source`` into ``out``; returns it opened. ``source``: a UTF-8 file, a directory of
    them, or a HuggingFace ``datasets`` dataset (a ``save_to_disk`` directory or a cached name, read offline; its
    ``split`` and ``text_column``: :mod:`qkv.data.hub`).

    An ``out`` that already holds this input prepared with these settings is opened as it is; one left by an
    interrupted run is finished; one with other input or settings is refused (so nothing prepared is overwritten).
    ``tokenizer`` replaces the one ``settings`` would build (e.g. a run's own, when it resumes)."""
    settings = settings or PrepareSettings()
    settings.validate()
    out = Path(out)
    recorded = {**asdict(settings), "tokenizer": "given" if tokenizer is not None else settings.tokenizer}
    created = not out.exists()
    manifest = None
    try:
        if is_dataset(source):
            before = _existing(out, None, None)  # (a file, or another directory's content, is refused before export)
            if before is not None and before["inputs"].get("dataset") != str(source):
                raise ConfigError(f"{out} holds data prepared from other input; choose another --out or remove it")
            export_dataset(str(source), out / EXPORT, split, text_column)
            sources = list_sources(out / EXPORT)
            inputs = {"dataset": str(source), "split": split, "column": text_column,
                      "fingerprint": exported_fingerprint(out / EXPORT),
                      "files": [s.fingerprint() for s in sources]}  # fmt: skip
        else:
            if (split, text_column) != ("train", "text"):
                raise ConfigError(f"a split and a text column choose within a dataset; {source} is a file or directory")
            sources = list_sources(source)
            inputs = {"path": str(Path(source).resolve()), "files": [s.fingerprint() for s in sources]}
        manifest = _existing(out, recorded, inputs)
        if manifest is not None and manifest["complete"]:
            return PreparedCorpus(out)
        out.mkdir(parents=True, exist_ok=True)
        if manifest is None:
            manifest = _start(out, sources, settings, recorded, inputs, tokenizer, progress)
        _write_shards(out, manifest, sources, settings, progress, say)
    except (ConfigError, DiskFullError) as exc:
        if created and not isinstance(exc, DiskFullError):  # (a bad input or setting: nothing worth resuming)
            shutil.rmtree(out, ignore_errors=True)
        raise
    except KeyboardInterrupt:
        kept = len(manifest["splits"]["train"]) + len(manifest["splits"]["val"]) if manifest else 0
        if created and not kept:
            shutil.rmtree(out, ignore_errors=True)
            raise KeyboardInterrupt("nothing was kept") from None
        raise KeyboardInterrupt(
            f"{kept} finished shard{'s' * (kept != 1)} kept in {out}: run the same command again to resume after them"
        ) from None
    return PreparedCorpus(out, verify=False)  # (its checksums were computed as it was written)


def _existing(out: Path, recorded: dict[str, Any] | None, inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest already in ``out`` if it is for this input and these settings (None: any); refuses any other
    content (an exported dataset, ``out/source``, is this command's own)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a directory (new, or one this command prepared)")
    manifest = read_manifest(out)
    if manifest is None:
        if any(p.name != EXPORT for p in out.iterdir()):
            raise ConfigError(f"{out} is not empty and holds no qkv data manifest; choose a new --out directory")
        return None
    for what, mine, theirs in (("settings", recorded, manifest["settings"]), ("input", inputs, manifest["inputs"])):
        if mine is not None and mine != theirs:
            keys = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
            raise ConfigError(
                f"{out} holds data prepared with other {what} ({', '.join(keys)} differ); choose another --out or "
                "remove it first"
            )
    return manifest


def _start(
    out: Path,
    sources: list[SourceFile],
    settings: PrepareSettings,
    recorded: dict[str, Any],
    inputs: dict[str, Any],
    given: Tokenizer | None,
    progress: bool,
) -> dict[str, Any]:
    """Build and save the tokenizer; write the first manifest (no shards yet, resume from the start)."""
    tokenizer = _build_tokenizer(settings.tokenizer, given, sources, settings, progress)
    dtype = _token_dtype(settings.dtype, tokenizer.vocab_size)
    tmp = out / (TOKENIZER + ".tmp")
    tokenizer.save(tmp)
    tmp.replace(out / TOKENIZER)
    total = sum(s.size for s in sources)
    manifest = {
        "format": FORMAT,
        "complete": False,
        "settings": recorded,
        "inputs": inputs,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype,
        "bytes": total,
        "val_starts_at": list(find_validation_start(sources, int(total * (1 - settings.val_fraction)))),
        "splits": {"train": [], "val": []},
        "replaced_bytes": 0,
        "resume": {"file": 0, "offset": 0},
    }
    write_manifest(out, manifest)
    return manifest


def _decoded(pieces: Iterable[Piece], decoder: Utf8Decoder) -> Iterator[tuple[tuple[Piece, int], str]]:
    """Each piece's text, keyed by the piece and the count of bytes replaced up to its end."""
    for piece in pieces:
        text = decoder.decode(piece)
        yield (piece, decoder.replaced), text


def _write_shards(
    out: Path,
    manifest: dict[str, Any],
    sources: list[SourceFile],
    settings: PrepareSettings,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    tokenizer = load_tokenizer_file(out / TOKENIZER)
    resume = manifest["resume"]
    bounds = list(itertools.accumulate((s.size for s in sources), initial=0))
    val_start = tuple(manifest["val_starts_at"])
    decoder = Utf8Decoder(sources, settings.errors)
    decoder.replaced = manifest["replaced_bytes"]
    writer = ShardWriter(out, manifest, np.dtype(manifest["dtype"]).newbyteorder("<"), settings.shard_tokens)
    done = bounds[resume["file"]] + resume["offset"]
    tokens, started = 0, time.perf_counter()
    bar = tqdm(total=bounds[-1], initial=done, unit="B", unit_scale=True, desc="prepare", disable=not progress)
    try:
        # (pieces no larger than a shard, so a small shard size is honoured: shards close where pieces end)
        size = min(PIECE_BYTES, settings.shard_tokens)
        pieces = read_pieces(sources, resume["file"], resume["offset"], size, boundary=val_start)
        encoder = PieceEncoder(tokenizer, out / TOKENIZER, bounds[-1] - done)
        for (piece, replaced), (ids, starts) in encoder.map(_decoded(pieces, decoder)):
            split = "val" if (piece.file, piece.start) >= val_start else "train"
            writer.add(split, ids, starts, {"file": piece.file, "offset": piece.start})
            manifest["replaced_bytes"] = replaced  # (up to this piece's end: what a run resumed after it has seen)
            tokens += len(ids)
            writer.piece_done({"file": piece.file, "offset": piece.end}, piece.continues)
            bar.update(len(piece.data))
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tokens/s", refresh=False)
        writer.close(None)
    except OSError as exc:
        writer.abort()
        if exc.errno == errno.ENOSPC:
            kept = len(manifest["splits"]["train"]) + len(manifest["splits"]["val"])
            raise DiskFullError(
                f"the disk holding {out} is full; the shard being written was removed and {kept} finished shard"
                f"{'s' * (kept != 1)} kept: free some space and run the same command again to resume"
            ) from None
        raise
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    if decoder.replaced:
        say(f"warning: replaced {decoder.replaced:,} bytes that are not UTF-8 with U+FFFD (the first at "
            f"{decoder.first_replaced})")  # fmt: skip
    manifest["complete"] = True
    del manifest["resume"]
    write_manifest(out, manifest)
