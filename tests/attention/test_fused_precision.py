"""Which precision the fused backend's kernel runs in on the CPU for bf16 inputs, and what that costs in accuracy."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.attention.backends import fused
from tests.attention.test_backends import _inputs
from tests.conftest import band, plain_attention


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_half_precision_on_the_cpu_runs_the_kernel_in_fp32(autocast):
    """bf16 inputs on the CPU: the kernel runs in fp32 (several times faster there than its bf16 kernels), so the
    result is the fp32 attention of the bf16 values, rounded once to bf16 (8 significant bits: rtol 2^-8)."""
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _inputs(lq=9, lk=9))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        out, _ = qkv.attend(q, k, v, causal=True, backend="fused")
    assert out.dtype == torch.bfloat16
    ref, _ = plain_attention(q, k, v, band(9, 9, True, None))
    torch.testing.assert_close(out.double(), ref.to(torch.bfloat16).double(), rtol=2**-8, atol=2**-8)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    want = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(grads, want):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b.to(torch.bfloat16).double(), rtol=2**-8, atol=2**-8)


@pytest.mark.parametrize(("lq", "grad"), [(1, False), (9, False), (9, True)])
def test_fused_bf16_inference_runs_the_bf16_kernel_for_two_queries_or_more(monkeypatch, lq, grad):
    """Without a backward to follow and for two or more queries (a prompt, a batch of sentences), the CPU's bf16
    kernel runs where oneDNN has bf16 kernels (faster there than converting); one query (a decoding step) and any
    call a backward follows run in fp32. Either way the result is the attention of the bf16 values to within bf16's
    rounding of the probabilities and of the output (2^-8 relative each)."""
    seen: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_(grad) for t in _inputs(lq=lq, lk=9))
    mask = torch.rand(2, 1, lq, 9, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    with torch.set_grad_enabled(grad):
        out, _ = qkv.attend(q, k, v, mask, backend="fused")
    native = fused.BF16_PACKS and lq > 1 and not grad
    assert seen == [torch.bfloat16 if native else torch.float32]
    ref, _ = plain_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref.to(torch.bfloat16).double(), rtol=2**-7, atol=2**-7)
