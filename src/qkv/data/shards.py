"""A prepared corpus on disk: token shards, their document starts, the tokenizer and a manifest.

``DATA_DIR/``
  ``manifest.json``: the settings, the input files (names, sizes, times), and per split the shards with their token
  and document counts and SHA-256 checksums; ``"complete": false`` and a ``"resume"`` position while
  :func:`qkv.data.prepare.prepare` is still writing.
  ``tokenizer.json``: the tokenizer the ids belong to.
  ``train-00000.bin`` ...: token ids, raw ``uint16`` (a vocabulary of at most 65,536) or ``uint32``, little-endian,
  the format nanoGPT's ``train.bin`` uses; ``train-00000.docs``: ``int64`` offsets where each document starts.

Training reads shards a window at a time (:class:`TokenShard`), so a corpus of any size costs a process the rows
of its batches, not the corpus' size. Every shard is written to a ``.partial`` file and renamed when complete, so a
shard named in the manifest is always whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qkv.errors import CheckpointError
from qkv.jsonfile import read_json
from qkv.tokenizers import Tokenizer, load_tokenizer_file

__all__ = [
    "FORMAT",
    "MANIFEST",
    "PreparedCorpus",
    "Shard",
    "ShardWriter",
    "TokenShard",
    "read_manifest",
    "write_manifest",
]

FORMAT = "qkv-shards/1"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (a reader sees the old one or the new one, never a part)."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when it has none; one that is not a qkv manifest is an error."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qkv data manifest (format {FORMAT})")
    return manifest


@dataclass
class Shard:
    """One shard of a split as it is being written: its name, tokens so far, document starts and running hash."""

    name: str
    tokens: int = 0
    starts: list[np.ndarray] = field(default_factory=list)
    hash: Any = field(default_factory=hashlib.sha256)


class ShardWriter:
    """Appends tokens to the shards of ``directory``: one open shard at a time (train's, then val's), closed when it
    reaches ``shard_tokens`` at a piece's end or when the split changes; every close renames the shard into place
    and rewrites the manifest with the position to resume from."""

    def __init__(self, directory: Path, manifest: dict[str, Any], dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.manifest, self.dtype, self.shard_tokens = directory, manifest, dtype, shard_tokens
        self.open: Shard | None = None
        self.split: str | None = None
        self._file: Any = None

    def _partial(self) -> Path:
        assert self.open is not None
        return self.directory / f"{self.open.name}.bin.partial"

    def add(self, split: str, tokens: np.ndarray, starts: np.ndarray, position: dict[str, Any] | None) -> None:
        """Append ``tokens`` (1-D ids) of ``split`` whose documents start at ``starts`` (offsets into ``tokens``);
        ``position`` is where the piece they come from starts (the resume point if the previous shard closes)."""
        if self.open is not None and split != self.split:
            self.close(position)
        if self.open is None:
            shards = self.manifest["splits"][split]
            self.open, self.split = Shard(f"{split}-{len(shards):05d}"), split
            self._file = open(self._partial(), "wb")  # noqa: SIM115  # (held across calls; closed in close/abort)
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._file.write(data.data.cast("B"))
        self.open.hash.update(data.data.cast("B"))
        self.open.starts.append(np.asarray(starts, dtype=np.int64) + self.open.tokens)
        self.open.tokens += len(data)

    def piece_done(self, position: dict[str, Any], continues: bool) -> None:
        """A piece is written; ``position`` is where the next one starts. A full shard closes here unless a document
        goes on into the next piece (a shard ends where a document does)."""
        if self.open is not None and self.open.tokens >= self.shard_tokens and not continues:
            self.close(position)

    def close(self, position: dict[str, Any] | None) -> None:
        """Finish the open shard: flush and rename it, write its document starts, record it in the manifest with
        ``position`` as the place to resume from."""
        shard, split = self.open, self.split
        if shard is None or split is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        starts = (np.concatenate(shard.starts) if shard.starts else np.zeros(0, np.int64)).astype("<i8").tobytes()
        (self.directory / f"{shard.name}.docs").write_bytes(starts)
        os.replace(self._partial(), self.directory / f"{shard.name}.bin")
        self.manifest["splits"][split].append(
            {"file": f"{shard.name}.bin", "tokens": shard.tokens, "documents": len(starts) // 8,
             "sha256": shard.hash.hexdigest(), "docs_sha256": hashlib.sha256(starts).hexdigest()}
        )  # fmt: skip
        self.manifest["resume"] = position
        write_manifest(self.directory, self.manifest)
        self.open = self.split = None

    def abort(self) -> None:
        """Drop the shard being written (its ``.partial`` file): the manifest still names the last whole one."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.open is not None:
            self._partial().unlink(missing_ok=True)
            self.open = self.split = None


class TokenShard:
    """A shard's token ids on disk, ``(tokens,)`` of ``dtype``, read a slice at a time.

    Reads go through the file (not a memory map): the pages read stay in the operating system's cache, not in this
    process, so a training process's memory does not grow with how much of the corpus it has read (a memory map's
    pages count as its own once touched, and the kernel maps them in large runs)."""

    def __init__(self, path: Path, dtype: np.dtype, length: int, before_read: Callable[[], None] | None = None) -> None:
        """``before_read``: called before every read (a corpus' wait for its checksums)."""
        self.path, self.dtype, self.length = path, dtype, length
        self.before_read = before_read

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise IndexError("a token shard is read in contiguous slices")
        if self.before_read is not None:
            self.before_read()
        with open(self.path, "rb") as handle:
            handle.seek(start * self.dtype.itemsize)
            data = handle.read(max(0, stop - start) * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All of it, in memory."""
        if self.before_read is not None:
            self.before_read()
        data = np.fromfile(self.path, dtype=self.dtype)
        return data if dtype is None else data.astype(dtype)


class PreparedCorpus:
    """A prepared data directory opened for training: per split, its shards' token ids (``tokens[split][i]``, a
    :class:`TokenShard`, 1-D, the manifest's dtype) and where their documents start (``documents[split][i]``)."""

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        """Open ``directory``: its manifest must be complete and every shard's size must match it; with ``verify``
        every shard's SHA-256 too (a shard changed after preparing is an error, not silent garbage). The checksums
        are computed in the background, on every core (hashlib releases the GIL), while the caller goes on (a
        training builds its model meanwhile); the first read of any shard waits for them, so nothing unchecked is
        ever read. :meth:`verified` waits explicitly."""
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None:
            raise CheckpointError(f"{self.directory} has no {MANIFEST}; prepare it first: qkv prepare TEXT --out DIR")
        if not manifest.get("complete"):
            raise CheckpointError(
                f"{self.directory} is only partly prepared (interrupted?); run the same qkv prepare command again "
                "to finish it"
            )
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self.tokenizer: Tokenizer = load_tokenizer_file(self.directory / TOKENIZER)
        entries = [entry for split in SPLITS for entry in manifest["splits"][split]]
        for entry in entries:
            self._check_sizes(entry)
        self._checks: list[Future[None]] = []
        if verify:
            pool = ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1)), thread_name_prefix="qkv-sha256")
            self._checks = [pool.submit(self._check_sums, entry) for entry in entries]
            pool.shutdown(wait=False)
        self.tokens: dict[str, list[TokenShard | np.ndarray]] = {}
        self.documents: dict[str, list[np.ndarray]] = {}
        for split in SPLITS:
            self.tokens[split], self.documents[split] = [], []
            for entry in manifest["splits"][split]:
                path = self.directory / entry["file"]
                self.tokens[split].append(TokenShard(path, self.dtype, entry["tokens"], self.verified))
                docs = path.with_suffix(".docs")
                self.documents[split].append(
                    np.memmap(docs, dtype="<i8", mode="r") if entry["documents"] else np.zeros(0, np.int64)
                )

    def verified(self) -> None:
        """Wait for the checksums :meth:`__init__` started; a shard that does not match is a CheckpointError."""
        while self._checks:
            self._checks[0].result()  # (raises the check's CheckpointError)
            self._checks.pop(0)

    def _check_sizes(self, entry: dict[str, Any]) -> None:
        path = self.directory / entry["file"]
        docs = path.with_suffix(".docs")
        for file, size in ((path, entry["tokens"] * self.dtype.itemsize), (docs, entry["documents"] * 8)):
            if not file.exists():
                raise CheckpointError(f"{file} is missing; the manifest of {self.directory} names it")
            if file.stat().st_size != size:
                raise CheckpointError(
                    f"{file} holds {file.stat().st_size} bytes but the manifest says {size}: the data directory is "
                    "damaged; prepare it again"
                )

    def _check_sums(self, entry: dict[str, Any]) -> None:
        path = self.directory / entry["file"]
        for file, key in ((path, "sha256"), (path.with_suffix(".docs"), "docs_sha256")):
            if file_sha256(file) != entry[key]:
                raise CheckpointError(
                    f"{file} does not match the checksum in {self.directory / MANIFEST}: it changed after it was "
                    "prepared; prepare the data again"
                )

    def in_memory(self) -> PreparedCorpus:
        """The same corpus with every array read into memory (the directory may then go)."""
        self.verified()
        self.tokens = {split: [np.array(a) for a in arrays] for split, arrays in self.tokens.items()}
        self.documents = {split: [np.array(a) for a in arrays] for split, arrays in self.documents.items()}
        return self

    def count(self, split: str) -> int:
        """Tokens in ``split``."""
        return sum(len(t) for t in self.tokens[split])


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
