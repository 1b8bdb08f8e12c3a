"""A model made ready for inference on a device in a precision: fp32, bf16 and fp16 weights (as
:func:`qkv.devices.place`), or weight-only int8 (:mod:`qkv.attention.int8`). Every loader (``load_pretrained``, the
runs a verb reads) goes through :func:`for_inference`, so ``dtype`` means the same everywhere."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from qkv.attention.gptq import InputHessians
from qkv.attention.int8 import INT8_ALIGNMENT, Int8Linear, quantizable, quantize_int8
from qkv.devices import INFERENCE_DTYPES, model_device, place
from qkv.errors import ConfigError

__all__ = ["CALIBRATION_MEMORY", "INFERENCE_DTYPES", "for_inference"]

# the most memory calibration's recorded inputs may hold at once: 8 · in² bytes per layer (GPT-2 small's 72 layers:
# 1.2 GB, one pass; a 7B Llama's layer alone takes 1.8 GB, so it is calibrated one layer per pass)
CALIBRATION_MEMORY = 2 * 2**30


def for_inference(
    model: nn.Module,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    calibrate: Callable[[nn.Module], object] | None = None,
) -> nn.Module:
    """``model`` on ``device`` in ``dtype``, in eval mode.

    ``dtype``: ``"fp32" | "bf16" | "fp16" | "auto"`` (or a torch dtype) as :func:`qkv.devices.place` (bf16 only
    where the device multiplies it natively); ``"int8"``: every linear layer whose input width is a multiple of 32
    holds int8 weights with per-channel scales, everything else (embeddings, norms, activations) stays fp32 — a
    CPU-only format (the kernel is a CPU one). None leaves the model's own precision.

    ``calibrate`` (int8 only): a function that runs the fp32 model on representative inputs (unpadded: e.g.
    :func:`qkv.pretrained.calibration.calibration_feed`). The inputs each linear layer sees are recorded and its
    weights rounded by GPTQ (:mod:`qkv.attention.gptq`) instead of to nearest: same format and speed, outputs
    closer to fp32.
    """
    if dtype != "int8":
        if calibrate is not None:
            raise ConfigError(f"calibration rounds int8 weights; dtype {dtype!r} has none to round (use dtype int8)")
        return place(model, device, dtype).eval()
    model = place(model, device, "fp32").eval()
    where = model_device(model)
    if where.type != "cpu":
        raise ConfigError(
            f"dtype int8 runs on the CPU (its kernel is a CPU one); on {where} use bf16 or fp16, which the GPU "
            "multiplies natively"
        )
    linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    if calibrate is None:
        quantize_int8(model)
    else:
        _quantize_calibrated(model, calibrate)
    if linear and not any(isinstance(m, Int8Linear) for m in model.modules()):
        warnings.warn(
            f"dtype int8: none of the model's {linear} linear layers has an input width that is a multiple of "
            f"{INT8_ALIGNMENT} (the int8 kernel's need), so it runs in fp32",
            stacklevel=2,
        )
    return model.eval()


def _quantize_calibrated(model: nn.Module, calibrate: Callable[[nn.Module], object]) -> None:
    """GPTQ for every quantizable layer, in groups of consecutive layers whose recorded inputs fit in
    :data:`CALIBRATION_MEMORY`: one calibration pass per group (a small model: one pass). A later group is
    recorded through the int8 layers of the earlier ones, so it rounds against the inputs the int8 model gives it."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and quantizable(m)]
    groups: list[list[str]] = []
    size = 0
    for name, layer in layers:
        need = 8 * layer.in_features**2  # a float64 (in, in) matrix
        if not groups or size + need > CALIBRATION_MEMORY:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += need
    missed: list[str] = []
    for group in groups:
        with torch.no_grad(), InputHessians(model, set(group)) as recorded:
            calibrate(model)
        if not recorded.hessians and group is groups[0]:
            raise ConfigError("calibration ran no input through the model's linear layers; nothing to calibrate on")
        missed += [name for name in group if name not in recorded.hessians]
        quantize_int8(model, recorded.hessians, names=set(group))
    _warn_missed(len(layers), missed)


def _warn_missed(count: int, missed: list[str]) -> None:
    """A warning naming the layers calibration never reached (they round to nearest)."""
    if missed:
        warnings.warn(
            f"calibration reached {count - len(missed)} of {count} int8 layers; the others round to nearest: "
            f"{', '.join(missed[:3])}{', ...' if len(missed) > 3 else ''}",
            stacklevel=4,
        )
