"""Who listens to beam search: an observer that learns which beam rows the chosen hypotheses came from.

``qkv.capture_attention`` installs one so that, after a beam search, it can pick each step's attention row of the
beam that won (beams are reordered at every step, so the rows of one hypothesis move around).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from torch import Tensor

__all__ = ["BEAM_OBSERVER"]

#: called once per beam search with, for every model call c, the rows ``(batch,)`` of the chosen hypotheses
BEAM_OBSERVER: ContextVar[Callable[[list[Tensor]], None] | None] = ContextVar("qkv_beam_observer", default=None)
