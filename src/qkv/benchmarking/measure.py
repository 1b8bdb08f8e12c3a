"""Timing and peak-memory measurement for benchmarks."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["peak_memory_of", "time_alternating", "time_pair", "reset_peak_rss", "peak_rss_since_reset"]


def time_pair(
    ours: Callable[[], object],
    reference: Callable[[], object],
    repeats: int = 5,
    sync: Callable[[], object] = lambda: None,
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``reference``, run alternately so both see the same machine load; ``sync``
    waits for queued device work (``torch.cuda.synchronize`` on a GPU) so each time covers its own work."""
    ours_time, ref_time = time_alternating([ours, reference], repeats, sync)
    return ours_time, ref_time


def time_alternating(
    fns: Sequence[Callable[[], object]], repeats: int = 5, sync: Callable[[], object] = lambda: None
) -> list[float]:
    """Median seconds of each function, after one warm-up run each (allocator, kernels, lazy init), the functions
    taking turns in every repeat so all see the same machine load."""
    for fn in fns:
        fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, own in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync()
            own.append(time.perf_counter() - start)
    return [statistics.median(own) for own in times]


def _status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    if match is None:  # pragma: no cover - Linux always has them
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) * 1024


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs``); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_rss_since_reset(baseline: int) -> int:
    """Peak resident bytes above ``baseline`` since :func:`reset_peak_rss`."""
    return max(0, _status_bytes("VmHWM") - baseline)


def peak_memory_of(module: str, *args: str) -> int:
    """Run ``python -m module *args`` in a fresh process that prints ``{"peak_bytes": ...}``; return the figure.

    A fresh process per measurement keeps one run's allocator state from hiding another's peak.
    """
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {module} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
