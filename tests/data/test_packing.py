"""Packed language-modelling batches: documents back to back with their ids, a pure function of (seed, step)."""

from __future__ import annotations

import pytest
import torch

from qkv.data.text import PackedLMData, split_documents
from qkv.errors import ConfigError


def _documents() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # each document's tokens are its own range of ids, so a token tells which document and position it came from
    return [torch.arange(1000 * i, 1000 * i + int(n)) for i, n in enumerate(torch.randint(1, 40, (30,), generator=g))]


def test_rows_are_windows_of_documents_with_targets_inside_the_same_document():
    data = PackedLMData.split(_documents(), context=24, val_fraction=0.2)
    x, y, ids = data.batch("train", 6, seed=3, step=5)
    assert x.shape == y.shape == ids.shape == (6, 24)
    assert torch.equal(y, x + 1)  # the next token of the same document (ids are consecutive inside one)
    assert torch.equal(x // 1000, y // 1000)  # never a target from another document
    for row in range(6):
        assert ids[row, 0] == 0 and bool((ids[row].diff() >= 0).all()) and bool((ids[row].diff() <= 1).all())
        same = ids[row].diff() == 0
        assert bool((x[row].diff()[same] == 1).all())  # one id: one contiguous window of one document
    train_docs = {int(d[0]) // 1000 for d in data.train}
    assert set((x // 1000).flatten().tolist()) <= train_docs
    vx, _, _ = data.batch("val", 6, seed=3, step=5)
    assert not set((vx // 1000).flatten().tolist()) & train_docs


def test_batches_are_a_function_of_seed_and_step_and_rows_are_slices_of_them():
    data = PackedLMData.split(_documents(), context=24)
    full = data.batch("train", 8, seed=1, step=2)
    assert all(torch.equal(a, b) for a, b in zip(full, data.batch("train", 8, seed=1, step=2)))
    part = data.batch("train", 8, seed=1, step=2, rows=slice(4, 8))
    assert all(torch.equal(a[4:], b) for a, b in zip(full, part))
    assert not torch.equal(full[0], data.batch("train", 8, seed=1, step=3)[0])


def test_documents_are_split_at_blank_lines_and_keep_their_end():
    assert split_documents("A b.\n\nC d.\n\n\n\nE") == ["A b.\n\n", "C d.\n\n", "E\n\n"]


def test_too_few_documents_are_refused():
    with pytest.raises(ConfigError, match="training split has no document of 2 tokens or more"):
        PackedLMData.split([torch.arange(10)], context=8)
