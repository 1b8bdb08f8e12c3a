"""qkv: the attention mechanism, complete, exact and fast, on PyTorch.

Names are imported when first used (PEP 562): ``import qkv.attention`` loads the attention core and PyTorch only,
not the tokenizers, safetensors, the training loop or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {  # public name -> the module that defines it
    "KVCache": "qkv.attention",
    "MultiHeadAttention": "qkv.attention",
    "attend": "qkv.attention",
    "register_score": "qkv.attention",
    "ModelOutput": "qkv.models.output",
    "GenerateOutput": "qkv.decoding",
    "GenerationConfig": "qkv.decoding",
    "generate": "qkv.decoding",
    "stop_strings": "qkv.decoding",
    "generate_stream": "qkv.decoding",
    "translate": "qkv.decoding",
    "score_continuation": "qkv.decoding",
    "score_translation": "qkv.decoding",
    "embed": "qkv.pretrained",
    "load_pretrained": "qkv.pretrained",
    "load_tokenizer": "qkv.pretrained",
    "save_pretrained": "qkv.pretrained",
    "capture_attention": "qkv.visualization",
    "intervene": "qkv.analysis",
    "record": "qkv.analysis",
    "hook_points": "qkv.analysis",
    "show": "qkv.analysis",
}
_SUBMODULES = (
    "analysis",
    "attention",
    "decoding",
    "devices",
    "errors",
    "models",
    "pretrained",
    "runs",
    "training",
    "visualization",
)

__all__ = [*_LAZY, "errors", "__version__"]

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from qkv import errors
    from qkv.analysis import hook_points, intervene, record, show  # noqa: F401
    from qkv.attention import KVCache, MultiHeadAttention, attend, register_score  # noqa: F401
    from qkv.decoding import (  # noqa: F401
        GenerateOutput,
        GenerationConfig,
        generate,
        generate_stream,
        score_continuation,
        score_translation,
        stop_strings,
        translate,
    )
    from qkv.models.output import ModelOutput  # noqa: F401
    from qkv.pretrained import embed, load_pretrained, load_tokenizer, save_pretrained  # noqa: F401
    from qkv.visualization import capture_attention  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"qkv.{name}")
    else:
        raise AttributeError(f"module 'qkv' has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
