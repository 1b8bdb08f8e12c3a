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
from contextlib import contextmanager
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
    with _offline():
        try:
            import datasets
        except ImportError:
            raise ConfigError(
                f"{reference} does not exist; give a UTF-8 text file, a directory of them, or a HuggingFace dataset "
                "(pip install datasets)"
            ) from None
        with _switched(datasets.config, HF_DATASETS_OFFLINE=True, HF_HUB_OFFLINE=True):
            try:
                if Path(reference).is_dir():
                    dataset = datasets.load_from_disk(reference)
                else:
                    dataset = datasets.load_dataset(reference, split=split)
            except Exception as exc:  # (datasets raises many types: not found offline, a bad directory, ...)
                raise ConfigError(
                    f"{reference} is neither a file nor a dataset qkv can read offline ({type(exc).__name__}: {exc}); "
                    "give a text file, a directory, a dataset saved with save_to_disk, or the name of one in the "
                    "local cache"
                ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ConfigError(f"the dataset {reference} has no split {split!r}; its splits: {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset


@contextmanager
def _offline() -> Iterator[None]:
    """No network while a dataset loads: the environment variables (read when ``datasets`` is first imported) and
    the hub's own switch (read when it was imported, perhaps before), all put back afterwards."""
    saved = {name: os.environ.get(name) for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(dict.fromkeys(saved, "1"))
    try:
        try:
            import huggingface_hub.constants as hub
        except ImportError:  # pragma: no cover - (datasets depends on it)
            yield
            return
        with _switched(hub, HF_HUB_OFFLINE=True):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _switched(namespace: Any, **values: Any) -> Iterator[None]:
    """``namespace``'s attributes set to ``values`` inside the block, as they were after it."""
    saved = {name: getattr(namespace, name, None) for name in values}
    for name, value in values.items():
        setattr(namespace, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(namespace, name, value)


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
