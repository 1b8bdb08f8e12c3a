"""The exceptions qkv raises for bad input.

Every message says what was given, what was expected and, where it helps, how to fix it. All of them derive from
:class:`QkvError`, so a caller (the CLI, say) can catch every user-facing problem in one place; most also derive from
``ValueError`` so code that already guards against ``ValueError`` keeps working.
"""

from __future__ import annotations


class QkvError(Exception):
    """Base class of every error qkv raises on purpose."""


class ShapeError(QkvError, ValueError):
    """A tensor has the wrong number of dimensions or a size that does not fit the others."""


class DTypeError(QkvError, TypeError):
    """A tensor has a dtype that the operation cannot use (e.g. an integer query, a float mask)."""


class MaskError(QkvError, ValueError):
    """A mask or bias has the wrong dtype or cannot broadcast to (batch, heads, q_len, k_len)."""


class ConfigError(QkvError, ValueError):
    """An argument or configuration value is out of range or inconsistent with another."""


class UnknownNameError(QkvError, ValueError):
    """A name (score function, backend, ...) is not in its registry."""


class BackendUnsupportedError(QkvError, ValueError):
    """The requested attention backend cannot compute this call exactly (e.g. ``fused`` with an additive score)."""


class CheckpointError(QkvError):
    """A checkpoint or pretrained directory is missing, corrupt, or of another kind."""


def describe_shape(shape: object) -> str:
    """Render a shape as ``(2, 8, 16, 64)`` for messages."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"  # type: ignore[attr-defined]  # (any sized iterable: torch.Size, tuple, list)


class OutOfMemoryError(QkvError, MemoryError):
    """An allocation qkv sized beforehand would not fit in the memory of the device it is meant for."""


class TrainingDivergedError(QkvError, ArithmeticError):
    """The training loss became NaN or infinite; the step that produced it was not applied or saved."""


class DiskFullError(QkvError, OSError):
    """The disk filled while qkv wrote to it; what was being written was removed, what was finished is kept."""
