"""Devices and precision: names resolved or refused with one clear line; checkpoints hold no device; tests marked
``gpu`` check the CUDA paths against the CPU wherever a GPU exists."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.devices import describe_hardware, place, precision_candidates, resolve_device
from qkv.errors import ConfigError
from tests.conftest import FP32, band, plain_attention

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_on_every_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tpu", "'tpu' is not a device; use one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "'cuda:x' is not a device"),
        ("gpu", "'gpu' is not a device"),
    ],
)
def test_unknown_device_names_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(spec, what="--device")


@pytest.mark.skipif(not NO_CUDA, reason="a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_says_so(spec):
    with pytest.raises(ConfigError, match=f"--device {spec}: this machine has no CUDA device"):
        resolve_device(spec, what="--device")


def test_precision_choices():
    cpu = torch.device("cpu")
    assert precision_candidates("fp32", cpu) == ["fp32"] and precision_candidates("bf16", cpu) == ["bf16"]
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        precision_candidates("fp16", cpu)
    with pytest.raises(ConfigError, match="'fp8' is not a precision"):
        precision_candidates("fp8", cpu)
    auto = precision_candidates("auto", cpu)
    native = describe_hardware(cpu)["cpu_native_bf16"]
    assert auto == (["bf16"] if native else ["fp32"])  # the hardware's choice: bf16 only on native units
    assert precision_candidates("tune", cpu) == (["bf16", "fp32"] if native else ["fp32"])  # timed: bf16 if faster


def test_inference_dtype_placement(bf16_allowed):
    model = torch.nn.Linear(4, 4)
    assert place(model, "cpu", "bf16").weight.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype fp16 is not supported on the CPU"):
        place(torch.nn.Linear(4, 4), "cpu", "fp16")
    with pytest.raises(ConfigError, match=r"dtype 'int8' is not one of fp32, bf16, fp16 \(int8: qkv.models.inference"):
        place(torch.nn.Linear(4, 4), None, "int8")


def test_bf16_is_refused_where_the_cpu_would_emulate_it(monkeypatch):
    """Without native bf16 units bf16 is emulated and slower than fp32: refused with the reason and the choices."""
    import qkv.devices

    monkeypatch.setattr(qkv.devices, "native_cpu_bf16", lambda: False)
    for dtype in ("bf16", torch.bfloat16):
        with pytest.raises(ConfigError, match=r"dtype bf16 on this CPU would be emulated .* use fp32, int8"):
            place(torch.nn.Linear(4, 4), "cpu", dtype)
    assert place(torch.nn.Linear(4, 4), "cpu", "auto").weight.dtype == torch.float32


def test_generation_follows_the_model_in_bf16(bf16_allowed):
    """A bf16 model generates from an fp32-free prompt; its greedy tokens equal the fp32 model's on a clear case."""
    torch.manual_seed(0)
    model = qkv.models.GPT(qkv.models.GPTConfig(vocab_size=16, max_seq_len=16, num_layers=1, num_heads=2, embed_dim=16))
    ids = torch.randint(0, 16, (2, 4))
    out = qkv.generate(place(model, "cpu", "bf16"), ids, max_new_tokens=5)
    assert out.shape == (2, 9) and torch.equal(out[:, :4], ids)


# -- wherever CUDA exists ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "chunked", "fused", "auto"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_backend_on_cuda_matches_the_float64_oracle(backend, causal):
    q, k, v = (torch.randn(2, 4, 33, 16, device="cuda", requires_grad=True) for _ in range(3))
    out, _ = qkv.attend(q, k, v, causal=causal, backend=backend)
    ref, _ = plain_attention(q, k, v, band(33, 33, causal, None).cuda())
    torch.testing.assert_close(out.double(), ref, **FP32)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), upstream)
    want = torch.autograd.grad(ref, (q, k, v), upstream.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **FP32)


@pytest.mark.gpu
def test_a_gpu_trained_checkpoint_generates_on_the_cpu(tmp_path):
    from qkv.runs import load_causal_lm
    from qkv.training import Trainer, load_run_config
    from qkv.training.lm import build_lm

    sets = ["model.num_layers=1", "model.embed_dim=32", "model.num_heads=2", "model.max_seq_len=32"]
    config = load_run_config(None, [*sets, "train.steps=3", "train.batch_size=4", "train.eval_iters=1",
                                    "train.device='cuda'", "train.precision='fp32'"])  # fmt: skip
    model, task, tok = build_lm(config)
    metrics = Trainer(model, task, config.train, tmp_path, tok, config.to_dict(), progress=False).fit()
    assert metrics["device"].startswith("cuda") and "gpu" in metrics
    cpu_model, tokenizer, _ = load_causal_lm(tmp_path, "cpu")
    gpu_model, _, _ = load_causal_lm(tmp_path, "cuda")
    prompt = torch.tensor([tokenizer.encode("Ham.")])
    assert torch.equal(
        qkv.generate(cpu_model, prompt, max_new_tokens=8), qkv.generate(gpu_model, prompt, max_new_tokens=8).cpu()
    )


def test_compile_settings(monkeypatch):
    from qkv.devices import resolve_compile

    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu) is False and resolve_compile(False, cpu) is False
    monkeypatch.setattr("qkv.devices.cxx_compiler", lambda: "/usr/bin/g++")
    assert resolve_compile(True, cpu) is True and resolve_compile("true", cpu) is True
    monkeypatch.setattr("qkv.devices.cxx_compiler", lambda: None)
    with pytest.raises(ConfigError, match="train.compile = true needs a C\\+\\+ compiler"):
        resolve_compile(True, cpu, what="train.compile")
    with pytest.raises(ConfigError, match="must be auto, true or false, got 'yes'"):
        resolve_compile("yes", cpu)


@pytest.mark.slow
def test_a_compiled_training_step_equals_the_uncompiled_one():
    """torch.compile changes no result beyond float rounding: the loss and every gradient of one step agree."""
    from qkv.devices import cxx_compiler
    from qkv.training import Trainer, load_run_config
    from qkv.training.lm import build_lm

    if cxx_compiler() is None:
        pytest.skip("no C++ compiler for torch.compile's CPU kernels")
    sets = ["model.num_layers=2", "model.embed_dim=32", "model.num_heads=2", "model.max_seq_len=32",
            "train.batch_size=4", "train.precision='fp32'", "train.device='cpu'"]  # fmt: skip
    results = []
    for compiled in (False, True):
        config = load_run_config(None, [*sets, f"train.compile={str(compiled).lower()}"])
        model, task, tok = build_lm(config)
        trainer = Trainer(model, task, config.train, "/nonexistent", tok, config.to_dict(), progress=False)
        assert trainer.compiled is compiled
        batch = trainer._batch("train", 0, 0, None)
        loss = task.loss(trainer.train_model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, **FP32)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, **FP32)
