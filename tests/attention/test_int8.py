"""Weight-only int8 (qkv.attention.int8): the quantization's error bound, both product routes against a plain
dequantized reference, stacked Q/K/V and gate/up products equal to the layers one by one, and whole models within a
stated distance of fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qkv
from qkv.attention.frozen import frozen_weights, linear_pair
from qkv.attention.int8 import KERNEL_MAX_ROWS, Int8Linear, quantize_int8
from qkv.errors import ConfigError
from qkv.models.inference import for_inference
from tests.conftest import FP32

BF16_ROUNDING = 2.0**-8  # one rounding of the kernel's bf16 output (8 significant bits)


def _layer(inp: int = 64, out: int = 48, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.logspace(-2, 1, out)[:, None])  # rows of very different sizes: per-channel scales
    return layer


def test_each_weight_is_within_half_a_step_of_its_row():
    """q = round(W / s) with s = max|W_row| / 127: every weight is off by at most s / 2, relative to its own row."""
    layer = _layer()
    int8 = Int8Linear.from_linear(layer)
    step = int8.scale.float()[:, None]
    assert int8.qweight.dtype == torch.int8 and int8.qweight.abs().max() <= 127
    assert ((int8.weight - layer.weight).abs() <= step / 2 * (1 + 1e-6)).all()
    assert int8.qweight.abs().amax(dim=1).min() >= 126  # each row uses its whole range (scale rounded to bf16)


def test_an_all_zero_row_stays_zero_and_finite():
    layer = _layer()
    with torch.no_grad():
        layer.weight[3] = 0
    int8 = Int8Linear.from_linear(layer)
    assert torch.isfinite(int8.weight).all() and (int8.weight[3] == 0).all()


@pytest.mark.parametrize("rows", [1, 3, KERNEL_MAX_ROWS])
def test_the_kernel_route_is_the_dequantized_product_of_bf16_inputs(rows):
    """A few rows (decoding) go through the int8 kernel: inputs read in bf16, fp32 accumulation, one bf16 rounding
    of the output — against the same product computed plainly in float64."""
    layer = _layer()
    int8 = Int8Linear.from_linear(layer)
    x = torch.randn(rows, 64)
    out = int8(x)
    reference = x.bfloat16().double() @ int8.weight.double().t() + layer.bias.double()
    assert out.dtype == torch.float32 and out.shape == (rows, 48)
    # the bias is added after the rounding; the accumulation's own error is ~1e-6 of |x| |W|
    floor = 1e-5 * (x.abs().double() @ int8.weight.abs().double().t())
    bias_free = reference - layer.bias.double()
    assert ((out.double() - reference).abs() <= BF16_ROUNDING * bias_free.abs() + floor).all()


def test_the_gemm_route_is_the_dequantized_product():
    """Many rows (a prompt, a batch) multiply the dequantized weight by the ordinary GEMM, in the input's precision."""
    layer = _layer()
    int8 = Int8Linear.from_linear(layer)
    x = torch.randn(2, KERNEL_MAX_ROWS, 64)
    torch.testing.assert_close(int8(x), F.linear(x, int8.weight, layer.bias), **FP32)


def test_only_linear_layers_the_kernel_can_take_are_quantized():
    """The kernel needs input widths in multiples of 32 (otherwise it returns wrong numbers, silently): those
    layers, and everything that is not a linear layer, keep their weights."""
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 64), nn.LayerNorm(64))
    quantize_int8(model)
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear) and isinstance(model[3], nn.LayerNorm)


def _gpt(**overrides) -> nn.Module:
    config = dict(vocab_size=96, max_seq_len=64, num_layers=2, num_heads=4, embed_dim=64) | overrides
    torch.manual_seed(0)
    return qkv.models.GPT(qkv.models.GPTConfig(**config)).eval()


def test_stacked_products_equal_the_layers_one_by_one():
    """Inside frozen_weights Q, K and V (and Llama's gate and up) are one product with the int8 rows and their
    scales concatenated: each output channel is computed exactly as by its own layer."""
    a, b = Int8Linear.from_linear(_layer()), Int8Linear.from_linear(_layer(bias=False))
    x = torch.randn(1, 1, 64)
    with torch.no_grad(), frozen_weights():
        first, second = linear_pair(x, a, b)
    torch.testing.assert_close(first, a(x), rtol=0, atol=0)
    torch.testing.assert_close(second, b(x), rtol=0, atol=0)


def test_an_int8_model_stays_close_to_fp32_and_decodes_on_its_cache():
    """A whole GPT in int8: logits within 2% (relative norm) of fp32's; greedy decoding on the KV cache gives the
    tokens that recomputing the whole sequence with the int8 model gives wherever the top two logits are apart."""
    fp32 = _gpt()
    int8 = for_inference(_gpt(), "cpu", "int8")
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 2 * 6 + 1  # q k v out fc proj per block; head
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        a, b = fp32(ids).logits, int8(ids).logits
    assert (a - b).norm() / a.norm() < 0.02
    out = qkv.generate(int8, ids, max_new_tokens=8)
    with torch.no_grad():
        for step in range(8):
            logits = int8(out[:, : 12 + step]).logits[0, -1]
            top2 = logits.topk(2).values
            if top2[0] - top2[1] > 0.05:  # (the cache's few-row products round inputs to bf16; recomputing does not)
                assert out[0, 12 + step] == logits.argmax()


def test_a_model_with_nothing_to_quantize_says_so():
    with pytest.warns(UserWarning, match="none of the model's 2 linear layers .* multiple of 32 .* runs in fp32"):
        model = for_inference(nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4)), "cpu", "int8")
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


def test_int8_is_refused_off_the_cpu_and_in_place():
    with pytest.raises(ConfigError, match=r"dtype 'int8' is not one of fp32, bf16, fp16 \(int8: qkv.models.inference"):
        qkv.devices.place(_gpt(), None, "int8")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="dtype int8 runs on the CPU"):
            for_inference(_gpt(), "cuda", "int8")


def test_attention_captured_from_an_int8_model_is_what_that_model_computed():
    """The pattern recorded in an int8 model is softmax(q kᵀ / √d) of the q and k that model projected (its own
    int8 products), with the causal mask: nothing is recomputed in another precision."""
    model = for_inference(_gpt(), "cpu", "int8")
    ids = torch.randint(0, 96, (2, 10))
    with torch.no_grad(), qkv.record(model) as cache:
        model(ids)
    q, k = cache["blocks.1.attn.hook_q"].double(), cache["blocks.1.attn.hook_k"].double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"].double(), scores.softmax(-1), **FP32)
