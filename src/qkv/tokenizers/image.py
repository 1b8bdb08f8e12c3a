"""An image run's "tokenizer": the format of its images (size, grey levels, classes), saved as the run's
``tokenizer.json`` so a checkpoint says what it models, as a text run's tokenizer does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.errors import CheckpointError

__all__ = ["ImageFormat"]


@dataclass
class ImageFormat:
    """What a run's images are (saved as the run's ``tokenizer.json``, the vocabulary of an image model): their
    size, grey levels and number of classes."""

    height: int
    width: int
    levels: int
    num_classes: int

    @property
    def vocab_size(self) -> int:
        return self.levels

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"qkv_tokenizer": "image", **self.__dict__}))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> ImageFormat:
        try:
            return cls(int(data["height"]), int(data["width"]), int(data["levels"]), int(data["num_classes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is not a valid image format: {exc}") from None
