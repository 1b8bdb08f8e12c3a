"""``qkv prepare`` from a HuggingFace ``datasets`` dataset: each row a document, read offline, exported once.

``datasets`` is not part of the dev setup, so these tests give qkv a stand-in module with the few names it uses
(``load_dataset``, ``load_from_disk``, ``DatasetDict``, ``config``; a dataset's ``column_names``, ``iter`` and
``_fingerprint``); the last test runs against the real library wherever it is installed."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qkv.cli import main
from qkv.data.prepare import prepare
from qkv.errors import ConfigError

ROWS = ["First row, a line.", "", "Second row\n\nwith two paragraphs.", "Third row, é.", "   "] * 40


class FakeDataset:
    def __init__(self, columns: dict[str, list]) -> None:
        self.columns, self.column_names, self._fingerprint = columns, list(columns), "fingerprint-1"

    def iter(self, batch_size: int):
        rows = len(next(iter(self.columns.values())))
        for start in range(0, rows, batch_size):
            yield {name: values[start : start + batch_size] for name, values in self.columns.items()}


class FakeDatasetDict(dict):
    pass


@pytest.fixture
def fake_datasets(monkeypatch):
    calls: list[tuple] = []
    dataset = FakeDataset({"text": ROWS, "id": list(range(len(ROWS)))})

    def load_dataset(name, split):
        calls.append(("load_dataset", name, split, os.environ.get("HF_DATASETS_OFFLINE")))
        return dataset

    def load_from_disk(path):
        calls.append(("load_from_disk", path))
        return FakeDatasetDict(train=dataset, test=FakeDataset({"text": ["only a test row"] * 30}))

    module = types.SimpleNamespace(load_dataset=load_dataset, load_from_disk=load_from_disk,
                                   DatasetDict=FakeDatasetDict, config=types.SimpleNamespace())  # fmt: skip
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return calls


def _text(corpus) -> str:
    ids = np.concatenate([np.asarray(a) for a in corpus.tokens["train"] + corpus.tokens["val"]]).astype(np.int64)
    return corpus.tokenizer.decode(ids.tolist())


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_cached_dataset_is_read_offline_each_row_a_document_and_exported_once(tmp_path, fake_datasets):
    corpus = prepare("someone/corpus", tmp_path / "a", progress=False)
    assert fake_datasets == [("load_dataset", "someone/corpus", "train", "1")]  # offline while it loads ...
    assert "HF_DATASETS_OFFLINE" not in os.environ  # ... and the environment as it was afterwards
    assert _text(corpus) == "".join(row + "\n\n" for row in ROWS if row.strip())  # empty rows skipped
    documents = sum(e["documents"] for split in ("train", "val") for e in corpus.manifest["splits"][split])
    assert documents == 4 * 40  # three rows, one of them two paragraphs
    assert corpus.manifest["inputs"]["dataset"] == "someone/corpus"
    assert corpus.manifest["inputs"]["fingerprint"] == "fingerprint-1"
    again = prepare("someone/corpus", tmp_path / "a", progress=False)  # prepared: nothing is loaded again
    assert len(fake_datasets) == 1 and again.manifest == corpus.manifest
    prepare("someone/corpus", tmp_path / "b", progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # the same dataset, the same files


def test_a_saved_dataset_dict_gives_the_split_asked_for(tmp_path, fake_datasets):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    corpus = prepare(saved, tmp_path / "d", progress=False, split="test")
    assert fake_datasets == [("load_from_disk", str(saved))]
    assert _text(corpus) == "only a test row\n\n" * 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"split": "nope"}, "has no split 'nope'; its splits: train, test"),
     ({"text_column": "body"}, "has no column 'body'; its columns: text, id (choose one with --text-column)")],
)  # fmt: skip
def test_a_missing_split_or_column_is_named_and_nothing_is_left(tmp_path, fake_datasets, kwargs, message):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare(saved, tmp_path / "d", progress=False, **kwargs)
    assert not (tmp_path / "d").exists()


def test_without_datasets_a_missing_path_says_what_would_read_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # (import fails)
    assert main(["prepare", str(tmp_path / "typo.txt"), "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "typo.txt does not exist; give a UTF-8 text file, a directory of them, or a HuggingFace dataset" in err
    assert "pip install datasets" in err and not (tmp_path / "d").exists()


def test_with_the_real_datasets_library(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(str(tmp_path / "saved"))
    corpus = prepare(tmp_path / "saved", tmp_path / "d", progress=False)
    assert _text(corpus) == "".join(row + "\n\n" for row in ROWS if row.strip())


def test_a_split_or_column_for_a_text_file_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("some text\n\nmore text\n" * 50)
    with pytest.raises(ConfigError, match="choose within a dataset"):
        prepare(tmp_path / "t.txt", tmp_path / "d", progress=False, split="test")
    assert not (tmp_path / "d").exists()
