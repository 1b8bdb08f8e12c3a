"""Calibrated int8 weights (GPTQ, Frantar et al. 2022): each weight rounded so that the *layer's output* on real
inputs moves least, not the weight itself.

Rounding every weight to its nearest int8 step (per-channel, :class:`~qkv.attention.int8.Int8Linear`) bounds each
weight's error, but a layer's output error is ``x (W - Ŵ)ᵀ``: input features that carry large activations (a feed-
forward's few outlier channels after its GELU) multiply their weights' errors by far more than others. GPTQ rounds
the input columns one at a time and spreads each column's rounding error over the columns not yet rounded, weighted by
how the inputs correlate — which needs the inputs' second moment ``H = Σ xᵀx`` over some calibration text
(:class:`InputHessians`). The format is unchanged: the same int8 ``(out, in)`` matrix and per-channel scale, through
the same kernel; only which integer each weight gets differs. With ``H`` a multiple of the identity nothing is spread
and GPTQ is exactly round-to-nearest.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from types import TracebackType

import torch
from torch import Tensor, nn

__all__ = ["GPTQ_DAMPING", "InputHessians", "gptq_int8", "int8_scale"]

# added to H's diagonal, as a share of its mean: keeps H invertible where inputs are collinear (or a channel is dead)
# and limits how far one column's error is pushed onto the others. GPTQ's paper uses 0.01; on MiniLM (1,000 held-out
# lines) 0.1 gave the closer embeddings (worst cosine to fp32 0.99947 against 0.99905), with 256 calibration lines
GPTQ_DAMPING = 0.1
# columns rounded together before their errors update the rest of the matrix in one product (the paper's "lazy batch")
_BLOCK = 128


def int8_scale(weight: Tensor) -> Tensor:
    """Per-channel symmetric scale ``max|W[n]| / 127`` of ``weight (out, in)`` -> ``(out,)`` fp32, rounded to bf16
    (the kernel reads its scales in bf16, so integers are chosen against the scale actually used). An all-zero row
    gets the smallest positive scale instead of 0, whose division would give NaN."""
    scale = weight.detach().float().abs().amax(dim=1).div(127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return scale.to(torch.bfloat16).float()


def gptq_int8(weight: Tensor, hessian: Tensor, damping: float = GPTQ_DAMPING) -> tuple[Tensor, Tensor]:
    """``weight (out, in)`` as int8 ``(out, in)`` and scale ``(out,)`` (:func:`int8_scale`), rounded by GPTQ against
    ``hessian (in, in)`` = ``Σ xᵀx`` of the layer's calibration inputs.

    Columns are taken in order of decreasing ``H[i, i]`` (the paper's "act order": the inputs that matter most are
    rounded first, while every other column can still absorb their error). Computed in fp32 (the Cholesky factors in
    float64); the result depends only on the weight and ``hessian``.
    """
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"gptq_int8 needs weight (out, in) and hessian (in, in); got {tuple(weight.shape)} and "
            f"{tuple(hessian.shape)}"
        )
    if not torch.isfinite(hessian).all():
        raise ValueError("gptq_int8: the calibration inputs' hessian has inf or NaN entries")
    scale = int8_scale(weight)
    work = weight.detach().float().clone()
    h = hessian.detach().double().cpu().clone()
    dead = h.diagonal() == 0  # an input that was always 0: its weights never matter, and H would be singular there
    h[dead, dead] = 1.0
    work[:, dead.to(work.device)] = 0.0
    order = torch.argsort(h.diagonal(), descending=True)
    h = h[order][:, order]
    h.diagonal().add_(damping * h.diagonal().mean())
    # the upper Cholesky factor of H⁻¹: row i holds how column i's error is spread over the later columns
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    inverse = inverse.float().to(work.device)
    work = work[:, order.to(work.device)]
    q = torch.empty_like(work)
    step = scale.to(work.device)
    for start in range(0, work.shape[1], _BLOCK):
        stop = min(start + _BLOCK, work.shape[1])
        block, tile = work[:, start:stop], inverse[start:stop, start:stop]
        pivots = tile.diagonal().tolist()  # (read once: one host copy per block, not one per column)
        errors = torch.empty_like(block)
        for i, pivot in enumerate(pivots):
            column = block[:, i]
            rounded = torch.round(column / step).clamp_(-127, 127)  # (as round-to-nearest divides: same ties)
            q[:, start + i] = rounded
            error = torch.addcmul(column, rounded, step, value=-1.0).div_(pivot)
            errors[:, i] = error
            # the rounding error, spread over the block's later columns (a rank-1 update)
            block[:, i + 1 :].addr_(error, tile[i, i + 1 :], alpha=-1.0)
        work[:, stop:] -= errors @ inverse[start:stop, stop:]
    return q[:, torch.argsort(order).to(q.device)].to(torch.int8), scale


class InputHessians:
    """``with InputHessians(model, names) as h: <run calibration inputs>`` -> ``h.hessians[name]`` = ``Σ xᵀx``
    ``(in, in)`` (float64: ``8 · in²`` bytes each) over every row ``x`` that reached the linear layer ``name`` (its
    qualified module name) while the block ran.

    ``names`` picks which ``nn.Linear`` modules to watch (default: all). Rows are every position of every input, so
    calibrate on unpadded inputs (a padded position's activations would count as a real input).
    """

    def __init__(self, model: nn.Module, names: Collection[str] | None = None) -> None:
        self.model = model
        self.names = names
        self.hessians: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).double()
            if name in self.hessians:
                self.hessians[name].addmm_(x.t(), x)
            else:
                self.hessians[name] = x.t() @ x

        return record

    def __enter__(self) -> InputHessians:
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear) and (self.names is None or name in self.names):
                self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
