"""The explorer page's Python side, without a browser: what it refuses, and that a page is written atomically."""

from __future__ import annotations

import pytest
import torch

from qkv.errors import ShapeError
from qkv.visualization.html import attention_page


def test_page_refuses_token_lists_that_do_not_fit_the_weights():
    weights = [torch.softmax(torch.randn(1, 3, 4), -1)]
    with pytest.raises(ShapeError, match="tokens has 5 entries but the attention has 4 keys"):
        attention_page(weights, list("abcde"))
    with pytest.raises(ShapeError, match="query_tokens has 2 entries but the attention has 3 queries"):
        attention_page(weights, list("abcd"), query_tokens=["x", "y"])


def test_a_page_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from pathlib import Path

    from qkv.visualization.html import write_page

    page = tmp_path / "p.html"
    write_page(page, "old")

    def full_disk(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write_page(page, "new")
    assert page.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["p.html"]
