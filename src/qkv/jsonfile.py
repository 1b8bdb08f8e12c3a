"""Reading JSON files with errors that name the file (used for tokenizers, checkpoints and pretrained configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qkv.errors import CheckpointError

__all__ = ["read_json"]


def read_json(path: Path) -> Any:
    """The parsed contents of ``path``; a missing file or invalid JSON raises :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (or is not a file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
