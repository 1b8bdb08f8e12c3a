"""Sizing large allocations before making them: a request that cannot fit is refused with its figure, instead of
an allocation of tens of GB that fails deep inside PyTorch (or makes the machine swap)."""

from __future__ import annotations

import os

import torch
from torch import nn

from qkv.errors import OutOfMemoryError

__all__ = ["activation_bytes", "check_fits", "device_memory_bytes", "format_bytes"]


def format_bytes(n: float) -> str:
    """``1.5 GB``-style, decimal units."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def device_memory_bytes(device: torch.device | str | None = None) -> int:
    """All the memory of ``device``: a CUDA device's total memory, otherwise the machine's physical memory."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(needed: float, what: str, hint: str, device: torch.device | str | None = None) -> None:
    """Raise :class:`OutOfMemoryError` naming ``what``, both figures and ``hint`` when ``needed`` bytes exceed all of
    the device's memory. Estimates are lower bounds, so a request this refuses could never have run."""
    available = device_memory_bytes(device)
    if needed > available:
        on_gpu = device is not None and torch.device(device).type != "cpu"
        where = f"on {device}" if on_gpu else "this machine has"
        raise OutOfMemoryError(
            f"{what} needs at least {format_bytes(needed)}, more than the {format_bytes(available)} of memory "
            f"{where}; {hint}"
        )


def activation_bytes(model: nn.Module, tokens: int) -> int:
    """A lower bound on the activations one forward pass over ``tokens`` positions keeps for the backward pass: the
    output of every linear and embedding layer, ``tokens × width`` values in the parameters' dtype."""
    width = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            width += module.out_features
        elif isinstance(module, nn.Embedding):
            width += module.embedding_dim
    parameter = next(model.parameters(), None)
    itemsize = parameter.element_size() if parameter is not None else 4
    return tokens * width * itemsize
