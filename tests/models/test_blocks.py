"""The shared pieces of the decoders (qkv.models.blocks) against PyTorch's own modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qkv.models.blocks import LayerNorm


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_equals_pytorchs_forward_and_backward(bias):
    """qkv's LayerNorm calls torch.layer_norm directly (a decoding step's norms were half wrapper): the same
    parameters, state dict, outputs and gradients as nn.LayerNorm."""
    torch.manual_seed(0)
    ours, theirs = LayerNorm(24, eps=1e-6, bias=bias), nn.LayerNorm(24, eps=1e-6, bias=bias)
    with torch.no_grad():
        ours.weight.normal_()
        if bias:
            ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 24, dtype=torch.float64) * 7 + 3
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours.double(), theirs.double()
    grad = torch.randn(3, 5, 24, dtype=torch.float64)
    out_ours, out_theirs = ours(a), theirs(b)
    out_ours.backward(grad), out_theirs.backward(grad)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12, msg=name)
