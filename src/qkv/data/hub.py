"""A HuggingFace ``datasets`` dataset as the input of :func:`qkv.data.prepare.prepare`.

A dataset saved with ``save_to_disk`` (a directory) or one already in the local cache (a name), read offline:
nothing is downloaded (``HF_DATASETS_OFFLINE``). Its text column is written out once, row by row, into
``OUT/source/`` as text files, which the preparation then reads like any other input: each row ends a document (a
blank line inside a row ends one too), empty rows are skipped. The files' times are fixed, so preparing the same
dataset twice still writes identical files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from qkv.errors import ConfigError

__all__ = ["EXPORT", "export_dataset", "exported_fingerprint", "is_dataset"]

EXPORT = "source"  # OUT/source: the exported text
_DONE = ".exported"  # written last, holding the dataset's fingerprint
FILE_BYTES = 64 << 20  # rows per exported file: about this many bytes


def is_dataset(source: str | Path) -> bool:
    """Whether ``source`` names a dataset: a directory ``save_to_disk`` wrote, or no path at all (a name)."""
    path = Path(source)
    if not path.exists():
        return True
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))


def _load(reference: str, split: str) -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # (read before datasets is imported: the cache, never the hub)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{reference} does not exist; give a UTF-8 text file, a directory of them, or a HuggingFace dataset "
            "(pip install datasets)"
        ) from None
    _offline(datasets)
    try:
        if Path(reference).is_dir():
            dataset = datasets.load_from_disk(reference)
        else:
            dataset = datasets.load_dataset(reference, split=split)
    except Exception as exc:  # (datasets raises many types: not found offline, a bad directory, ...)
        raise ConfigError(
            f"{reference} is neither a file nor a dataset qkv can read offline ({type(exc).__name__}: {exc}); give a "
            "text file, a directory, a dataset saved with save_to_disk, or the name of one in the local cache"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ConfigError(f"the dataset {reference} has no split {split!r}; its splits: {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset


def _offline(datasets: Any) -> None:
    """No network, even when ``datasets`` was imported before the variables above were set: its own and the hub's
    switches, which they read at import, set where they live."""
    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    try:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - (datasets depends on it)
        pass


def _rows(dataset: Any, column: str) -> Iterator[str]:
    for batch in dataset.iter(batch_size=1000):
        for text in batch[column]:
            if isinstance(text, str) and text.strip():
                yield text


def _write_rows(rows: Iterator[str], directory: Path) -> list[Path]:
    """``rows`` into ``part-NNNNN.txt`` files of about :data:`FILE_BYTES`, each row followed by a blank line."""
    files: list[Path] = []
    handle: BinaryIO | None = None
    try:
        for text in rows:
            if handle is None or handle.tell() >= FILE_BYTES:
                if handle is not None:
                    handle.close()
                files.append(directory / f"part-{len(files):05d}.txt")
                handle = open(files[-1], "wb")  # noqa: SIM115  # (rolled over in the loop, closed below)
            handle.write((text.rstrip("\r\n") + "\n\n").encode("utf-8"))
    finally:
        if handle is not None:
            handle.close()
    return files


def export_dataset(reference: str, directory: Path, split: str = "train", column: str = "text") -> None:
    """Write the ``column`` of ``reference``'s ``split`` into ``directory`` as text files (unless a finished export
    is there already; an unfinished one starts again)."""
    if (directory / _DONE).is_file():
        return
    dataset = _load(reference, split)
    if column not in dataset.column_names:
        raise ConfigError(
            f"the dataset {reference} has no column {column!r}; its columns: {', '.join(dataset.column_names)} "
            "(choose one with --text-column)"
        )
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    files = _write_rows(_rows(dataset, column), directory)
    if not files:
        raise ConfigError(f"the {column!r} column of the dataset {reference} ({split}) holds no text")
    for file in files:
        os.utime(file, ns=(0, 0))  # (the manifest records times: the same dataset gives the same manifest)
    (directory / _DONE).write_text(str(getattr(dataset, "_fingerprint", "")), encoding="utf-8")


def exported_fingerprint(directory: Path) -> str:
    """The fingerprint ``datasets`` gave the exported dataset ('' when it had none)."""
    return (directory / _DONE).read_text(encoding="utf-8")
