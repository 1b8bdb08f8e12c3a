"""Where a model runs and in what precision: device and precision names resolved once, checked with a clear error,
and described for the records (``metrics.json``, benchmark tables).

``"auto"`` devices: CUDA (under ``torchrun``, the process's ``LOCAL_RANK`` GPU), then Apple's MPS, then the CPU.
``"auto"`` precision is decided by the hardware alone, so the same machine makes the same choice however busy it is:
on CUDA bf16 autocast where the GPU supports it, fp16 with loss scaling otherwise; on the CPU bf16 where the
processor has native bf16 matrix units (AVX512-BF16 or AMX, with PyTorch's AVX-512 kernels active), fp32 everywhere
else. ``"tune"`` asks for a timing instead: on such a CPU the trainer times a micro-step both ways and keeps bf16 only
if it is faster (a choice that can differ from run to run on a loaded machine, which is why it is never the default).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from qkv.errors import ConfigError

__all__ = [
    "HasParameters",
    "DEVICES",
    "INFERENCE_DTYPES",
    "PRECISIONS",
    "autocast",
    "describe_hardware",
    "inference_dtype",
    "model_device",
    "native_cpu_bf16",
    "place",
    "precision_candidates",
    "resolve_compile",
    "resolve_device",
]

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "tune", "fp32", "bf16", "fp16")
# what a model loaded for inference may be held in (qkv.models.inference.for_inference; int8: weight-only int8)
INFERENCE_DTYPES = ("auto", "fp32", "bf16", "fp16", "int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # training autocast and inference


def _local_rank() -> int | None:
    rank = os.environ.get("LOCAL_RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def resolve_device(spec: str | torch.device | None = "auto", *, what: str = "device") -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` (or a ``torch.device``) as a device this machine has.

    Under ``torchrun`` (``LOCAL_RANK`` set), ``"cuda"`` and an automatic CUDA choice mean this process's GPU.
    ``what`` names the setting in errors (``"--device"``, ``"train.device"``).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError(f"{what} mps: this machine has no Apple MPS device; use cpu or auto")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise ConfigError(f"{what} {spec!r} is not a device; use one of {', '.join(DEVICES)} (N = a GPU number)")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what} {spec}: this machine has no CUDA device (PyTorch sees none); use cpu or auto")
    index = int(match.group(1)) if match.group(1) is not None else (_local_rank() or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{what} cuda:{index}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def native_cpu_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX-BF16) and PyTorch's AVX-512
    kernels are in use (``ATEN_CPU_CAPABILITY=avx2`` turns them off, and bf16 then runs emulated, slowly)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        caps = probe()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def precision_candidates(spec: str, device: torch.device, *, what: str = "precision") -> list[str]:
    """The precisions ``spec`` allows on ``device``, preferred first: one for an explicit choice and for ``auto``
    (the hardware's choice, :func:`inference_dtype`'s rule), two for ``tune`` on a CPU with native bf16
    (``["bf16", "fp32"]``: keep bf16 only if it is measured faster)."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise ConfigError(f"{what} {spec!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    if spec == "fp16" and device.type == "cpu":
        raise ConfigError(f"{what} fp16 is not supported on the CPU (no fp16 autocast kernels); use bf16 or fp32")
    if spec not in ("auto", "tune"):
        return [spec]
    if device.type == "cuda":
        return ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    if device.type == "cpu" and native_cpu_bf16():
        return ["bf16"] if spec == "auto" else ["bf16", "fp32"]
    return ["fp32"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` (``bf16``/``fp16``) on ``device``; fp32 is no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def describe_hardware(device: torch.device) -> dict[str, Any]:
    """What a result was measured on: the device, the CPU's kernel capability and whether it has native bf16, the
    GPU's name."""
    record: dict[str, Any] = {
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_cpu_bf16(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


@contextlib.contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Run a block without moving the CPU (and the device's) random number generators on."""
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


def cxx_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would build CPU kernels with (``$CXX``, g++, c++ or clang++), if any."""
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


def resolve_compile(spec: bool | str, device: torch.device, *, what: str = "compile") -> bool:
    """Whether to ``torch.compile``: ``True``/``False`` as asked (True without a compiler is an error), ``"auto"``
    on CUDA (where it pays) when Triton is importable, off on CPUs (measured: no gain for nanoGPT's baby model on 2
    cores, and minutes of compiling first) — with a one-line warning when auto cannot compile."""
    if isinstance(spec, str) and spec.lower() not in ("auto", "true", "false"):
        raise ConfigError(f"{what} must be auto, true or false, got {spec!r}")
    if isinstance(spec, str) and spec.lower() != "auto":
        spec = spec.lower() == "true"
    if spec is False:
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401 - inductor's GPU code generator
        except ImportError:
            if spec is True:
                raise ConfigError(f"{what} = true needs Triton for CUDA kernels (pip install triton)") from None
            warnings.warn(f"{what} = auto: Triton is not installed, running uncompiled", stacklevel=2)
            return False
        return True
    if spec is True:
        if device.type == "cpu" and cxx_compiler() is None:
            raise ConfigError(f"{what} = true needs a C++ compiler for CPU kernels (g++ or clang++; none on PATH)")
        return True
    return False


def place(
    model: torch.nn.Module, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> torch.nn.Module:
    """``model`` moved to ``device`` (resolved as :func:`resolve_device`; None = leave it where it is) in ``dtype``
    (``"auto" | "fp32" | "bf16" | "fp16"`` or a torch dtype, auto as :func:`inference_dtype`; None = leave it),
    for inference. bf16 on a CPU without native bf16 units is refused (emulated, it is slower than fp32), as is
    fp16 on any CPU; int8 is :func:`qkv.models.inference.for_inference`'s."""
    if device is not None:
        model = model.to(resolve_device(device, what="device"))
    if dtype == "auto":
        dtype = inference_dtype("auto", model_device(model))
    if dtype is not None:
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (int8: qkv.models.inference)")
            dtype = DTYPES[dtype]
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not a floating dtype qkv runs in ({', '.join(DTYPES)})")
        if dtype == torch.float16 and model_device(model).type == "cpu":
            raise ConfigError("dtype fp16 is not supported on the CPU (no fast fp16 kernels); use bf16 or fp32")
        if dtype == torch.bfloat16 and model_device(model).type == "cpu" and not native_cpu_bf16():
            raise ConfigError(
                f"dtype bf16 on this CPU would be emulated (PyTorch's kernels here: "
                f"{torch.backends.cpu.get_cpu_capability()}, without AVX512-BF16 or AMX units) and slower than fp32; "
                "use fp32, int8 (weight-only, a quarter of fp32's bytes) or auto (fp32 here)"
            )
        model = model.to(dtype)
    return model


def inference_dtype(spec: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where the device multiplies bf16 natively (a CPU with AVX512-BF16/AMX, a GPU with bf16),
    else ``"fp32"``; any other spec is returned as given (checked by :func:`place`)."""
    if spec != "auto":
        return spec
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and native_cpu_bf16() else "fp32"


class HasParameters(Protocol):
    """Anything with ``parameters()`` (a module, or a protocol of one): its device is theirs."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


def model_device(model: HasParameters) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
