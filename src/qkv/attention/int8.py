"""Weight-only int8 linear layers for inference: weights stored as int8 with one scale per output channel, products
through PyTorch's maintained ``_weight_int8pack_mm`` kernel (ATen's per-channel weight-only int8 product).

Decoding one token multiplies one row by every weight, a vector-matrix product whose speed on a CPU is set by how fast
the weight streams from memory: int8 weights stream a quarter of fp32's bytes. Each output channel ``n`` keeps
``W[n] ≈ scale[n] · q[n]`` with ``q`` in [-127, 127] and ``scale[n] = max|W[n]| / 127`` (symmetric, per channel:
the error of a weight is at most half a step of its own row). Activations stay in the model's precision; the kernel
reads them in bf16 (its vectorized x86 code exists only for bf16 inputs — fp32 inputs fall back to a scalar loop ~15x
slower), accumulates in fp32 and returns bf16, which is cast back to the activation dtype.

Many rows at once (a prompt, a batch of sentences) is a matrix product that no longer waits on memory: there the
weight is dequantized for the call and multiplied by the ordinary GEMM, which is faster than the small-tile kernel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention.gptq import gptq_int8, int8_scale

__all__ = ["INT8_ALIGNMENT", "Int8Linear", "int8_linear", "quantize_int8", "quantizable"]

# the kernel's vectorized loops step 8 (AVX2) or 16 (AVX-512) bf16 values along the input features with aligned
# loads, and return wrong numbers — without an error — when the input width is not a multiple of their step
INT8_ALIGNMENT = 32
# up to this many rows the product streams the weight (the int8 kernel's case); beyond, it is a GEMM
KERNEL_MAX_ROWS = 16


class Int8Linear(nn.Module):
    """A linear layer ``y = x Wᵀ + b`` with ``W`` held as int8 ``qweight (out, in)`` times per-channel ``scale (out,)``.

    Built from a trained ``nn.Linear`` by :meth:`from_linear` (or :func:`quantize_int8` for a whole model); inference
    only (no gradients reach the int8 weight). ``x``: ``(..., in_features)`` -> ``(..., out_features)`` in x's dtype.
    """

    qweight: Tensor
    scale: Tensor

    def __init__(self, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be an int8 (out, in) matrix, got {qweight.dtype} {tuple(qweight.shape)}")
        if scale.shape != (qweight.shape[0],):
            raise ValueError(f"scale must be (out,) = ({qweight.shape[0]},), got {tuple(scale.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        # the kernel wants its scales in the activations' kernel dtype (bf16); kept once, not converted per call
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear, hessian: Tensor | None = None) -> Int8Linear:
        """``layer``'s weight quantized per output channel (symmetric, absmax / 127); its bias kept as it is.

        Each weight is rounded to its nearest step, or, given ``hessian (in, in)`` = ``Σ xᵀx`` of the layer's
        calibration inputs, by GPTQ (:func:`qkv.attention.gptq.gptq_int8`: the same format, smaller output error)."""
        if hessian is not None:
            qweight, scale = gptq_int8(layer.weight, hessian)
            return cls(qweight, scale, layer.bias)
        weight = layer.weight.detach().float()
        scale = int8_scale(weight)
        qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(qweight, scale, layer.bias)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``(out, in)`` in fp32, exactly what the products use (for code that reads it)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        return int8_linear(x, self.qweight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def int8_linear(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x (..., in) @ (scale[:, None] · qweight)ᵀ + bias`` -> ``(..., out)`` in ``x``'s dtype: the int8 kernel for a
    few rows on a CPU, a dequantized GEMM otherwise (a prompt, a batch; other devices)."""
    width = qweight.shape[1]
    rows = x.numel() // max(width, 1)
    if x.device.type == "cpu" and rows <= KERNEL_MAX_ROWS:
        # copy=True: a fresh, aligned buffer (the kernel's loads are aligned), even when x is already bf16
        flat = x.reshape(rows, width).to(torch.bfloat16, copy=True)
        out = torch._weight_int8pack_mm(flat, qweight, scale)
        # the bias, in x's dtype, added as the bf16 output is widened: one pass where converting, then adding, took
        # two (type promotion makes the sum x's dtype; the numbers are the same)
        out = out.to(x.dtype) if bias is None else torch.add(bias.to(x.dtype), out)
        return out.reshape(*x.shape[:-1], -1)
    # x (q · s)ᵀ = (x qᵀ) · s: the per-channel scale applied to the product's columns, so the call widens the int8
    # weight once and never builds the scaled copy (a whole extra weight's worth of memory and time)
    out = F.linear(x, qweight.to(x.dtype)) * scale.to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def quantizable(layer: nn.Module) -> bool:
    """Whether :func:`quantize_int8` converts ``layer``: an ``nn.Linear`` whose input width the kernel can take."""
    return isinstance(layer, nn.Linear) and layer.in_features % INT8_ALIGNMENT == 0


def quantize_int8(
    model: nn.Module,
    hessians: Mapping[str, Tensor] | None = None,
    *,
    names: Collection[str] | None = None,
    prefix: str = "",
) -> nn.Module:
    """``model`` with every quantizable ``nn.Linear`` (input width a multiple of 32) replaced in place by an
    :class:`Int8Linear`; others (and embeddings, norms, convolutions, recurrent cells) keep their precision. A weight
    shared by several layers (tied embeddings and output layer) is quantized once per layer that multiplies by it.

    ``hessians`` (from :class:`qkv.attention.gptq.InputHessians`, keyed by qualified module name) makes the layers
    it names rounded by GPTQ; the others round to nearest. ``names``: quantize only these layers (qualified names;
    default: all). ``prefix``: ``model``'s own name inside the model the names refer to."""
    hessians = hessians or {}
    for name, child in list(model.named_children()):
        full_name = f"{prefix}{name}"
        if isinstance(child, nn.Linear) and quantizable(child):
            if names is None or full_name in names:
                int8 = Int8Linear.from_linear(child, hessians.get(full_name))
                setattr(model, name, int8.to(child.weight.device))
        else:
            quantize_int8(child, hessians, names=names, prefix=f"{full_name}.")
    return model
