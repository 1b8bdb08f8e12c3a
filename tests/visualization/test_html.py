"""The explorer page's Python side, without a browser: what it refuses."""

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
