"""GPTQ-rounded int8 weights (qkv.attention.gptq): round-to-nearest where inputs are uncorrelated, a smaller output
error than round-to-nearest on the inputs it was calibrated on, dead inputs handled, the recorded second moments
equal to Σ xᵀx computed by hand (Q/K/V included, though self-attention multiplies them stacked), and models
calibrated through ``for_inference`` / ``load_pretrained``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from qkv.attention.gptq import InputHessians, gptq_int8, int8_scale
from qkv.attention.int8 import Int8Linear, quantizable
from qkv.attention.multi_head import MultiHeadAttention
from qkv.errors import ConfigError
from qkv.models.gpt import GPT, GPTConfig
from qkv.models.inference import for_inference
from tests.conftest import FP32


def _weight(out: int = 48, inp: int = 64) -> torch.Tensor:
    return torch.randn(out, inp) * torch.logspace(-2, 0, out)[:, None]


def _outlier_inputs(rows: int = 2000, inp: int = 64) -> torch.Tensor:
    """Correlated inputs with a few large channels, as a feed-forward's after its activation."""
    torch.manual_seed(1)
    x = torch.randn(rows, 8) @ torch.randn(8, inp) + 0.3 * torch.randn(rows, inp)
    x[:, :3] *= 20.0
    return x


def test_with_uncorrelated_inputs_gptq_is_round_to_nearest():
    """H a multiple of the identity: no column's error has anywhere to go, so every integer is the nearest one."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(_weight())
    q, scale = gptq_int8(layer.weight, 7.0 * torch.eye(64, dtype=torch.float64))
    nearest = Int8Linear.from_linear(layer)
    assert torch.equal(q, nearest.qweight)
    assert torch.equal(scale, nearest.scale.float()) and torch.equal(scale, int8_scale(layer.weight))


def test_gptq_moves_the_layer_output_less_than_round_to_nearest():
    """The quantity GPTQ minimises, ‖X (W - Ŵ)ᵀ‖ on its calibration inputs, against rounding each weight alone
    (same format: int8 in [-127, 127], the same per-channel scale)."""
    torch.manual_seed(0)
    weight, x = _weight(), _outlier_inputs()
    hessian = x.double().t() @ x.double()
    q, scale = gptq_int8(weight, hessian)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    nearest = torch.round(weight / scale[:, None]).clamp(-127, 127)

    def output_error(integers: torch.Tensor) -> float:
        return (x.double() @ (weight.double() - integers.double() * scale.double()[:, None]).t()).norm().item()

    assert output_error(q) < 0.5 * output_error(nearest)


def test_a_dead_input_channel_gives_finite_weights():
    """An input that was always 0 makes H singular; its weights never matter and come out 0, the rest finite."""
    torch.manual_seed(0)
    x = _outlier_inputs()
    x[:, 5] = 0.0
    q, scale = gptq_int8(_weight(), x.double().t() @ x.double())
    assert torch.isfinite(scale).all() and (q[:, 5] == 0).all()


def test_gptq_names_bad_shapes_and_values():
    with pytest.raises(ValueError, match=r"hessian \(in, in\)"):
        gptq_int8(torch.randn(4, 8), torch.eye(4))
    with pytest.raises(ValueError, match="inf or NaN"):
        gptq_int8(torch.randn(4, 8), torch.full((8, 8), float("nan")))


def test_input_hessians_are_the_sum_of_outer_products_of_each_layers_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    batches = [torch.randn(5, 32), torch.randn(2, 3, 32)]
    with torch.no_grad(), InputHessians(model) as recorded:
        for x in batches:
            model(x)
    first = torch.cat([x.reshape(-1, 32) for x in batches]).double()
    second = torch.relu(model[0](first.float())).double()
    torch.testing.assert_close(recorded.hessians["0"], first.t() @ first, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(recorded.hessians["2"], second.t() @ second, rtol=1e-6, atol=1e-6)
    assert not any(m._forward_pre_hooks for m in model.modules())  # the hooks go when the block ends


def test_self_attention_calls_hooked_projections_one_by_one():
    """Self-attention multiplies Q, K and V stacked; a hook on one of them (here: recording inputs) makes each
    projection called as itself, so all three see the attention's input, with the output unchanged."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = attn(x)[0]
        with InputHessians(attn) as recorded:
            hooked = attn(x)[0]
    expected = x.reshape(-1, 32).double().t() @ x.reshape(-1, 32).double()
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert name in recorded.hessians
    for name in ("q_proj", "k_proj", "v_proj"):
        torch.testing.assert_close(recorded.hessians[name], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hooked, plain, **FP32)


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, max_seq_len=32, num_layers=2, num_heads=4, embed_dim=64)).eval()


def test_a_calibrated_int8_model_is_closer_to_fp32_than_round_to_nearest():
    torch.manual_seed(3)
    calibration = [torch.randint(0, 64, (8, 24)) for _ in range(4)]
    held_out = torch.randint(0, 64, (8, 24))
    model = _gpt()
    with torch.no_grad():
        reference = model(held_out).logits
        nearest = for_inference(_gpt(), "cpu", "int8")(held_out).logits

        def feed(m: nn.Module) -> None:
            for ids in calibration:
                m(ids)

        calibrated_model = for_inference(_gpt(), "cpu", "int8", calibrate=feed)
        calibrated = calibrated_model(held_out).logits
    assert sum(isinstance(m, Int8Linear) for m in calibrated_model.modules()) == sum(
        isinstance(m, nn.Linear) and quantizable(m) for m in model.modules()
    )
    assert (calibrated - reference).norm() < 0.8 * (nearest - reference).norm()  # (0.63-0.65 over 3 seeds)


def test_calibration_beyond_its_memory_runs_in_groups_of_layers(monkeypatch):
    """With room for one layer's recorded inputs at a time, every layer gets its own calibration pass (recorded
    through the layers already in int8) and the model still ends closer to fp32 than rounding to nearest."""
    import qkv.models.inference as inference

    monkeypatch.setattr(inference, "CALIBRATION_MEMORY", 1)
    torch.manual_seed(3)
    calibration = torch.randint(0, 64, (8, 24))
    held_out = torch.randint(0, 64, (8, 24))
    passes = []

    def feed(m: nn.Module) -> None:
        passes.append(sum(isinstance(layer, Int8Linear) for layer in m.modules()))
        m(calibration)

    with torch.no_grad():
        reference = _gpt()(held_out).logits
        nearest = for_inference(_gpt(), "cpu", "int8")(held_out).logits
        calibrated = for_inference(_gpt(), "cpu", "int8", calibrate=feed)(held_out).logits
    layers = sum(isinstance(m, nn.Linear) and quantizable(m) for m in _gpt().modules())
    assert passes == list(range(layers))  # one pass per layer, each after the ones before it were quantized
    assert (calibrated - reference).norm() < (nearest - reference).norm()


def test_calibration_errors_are_named():
    with pytest.raises(ConfigError, match="calibration rounds int8 weights"):
        for_inference(_gpt(), "cpu", "fp32", calibrate=lambda m: None)
    with pytest.raises(ConfigError, match="ran no input"):
        for_inference(_gpt(), "cpu", "int8", calibrate=lambda m: None)
    model = _gpt()
    with pytest.warns(UserWarning, match=r"reached \d+ of \d+ int8 layers; the others round to nearest"):
        for_inference(model, "cpu", "int8", calibrate=lambda m: m.blocks[0].ffn(torch.randn(3, 64)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for_inference(_gpt(), "cpu", "int8", calibrate=lambda m: m(torch.randint(0, 64, (2, 8))))
