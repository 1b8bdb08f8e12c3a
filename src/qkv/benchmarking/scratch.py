"""Scratch space for benchmarks: the checkpoints they save to load back, and the runs they train."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

__all__ = ["scratch_directory"]


def scratch_directory(prefix: str = "qkv-bench-") -> Path:
    """A new temporary directory, removed when the process ends (normally, on an error or on Ctrl-C): a benchmark
    run saves hundreds of megabytes of models there, which would otherwise stay in /tmp after every run."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
