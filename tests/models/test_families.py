"""Model families: a new family works everywhere through registration alone, and the registry's answers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import qkv
from qkv.errors import CheckpointError, ConfigError
from qkv.models import GPT, GPTConfig, families
from qkv.models.families import CAUSAL_LM, Family, family_for_hf, family_of, get_family, register_family
from qkv.models.llama import LlamaConfig
from qkv.runs import load_causal_lm, load_seq2seq
from qkv.training import Trainer, load_run_config
from qkv.training.config import RunConfig
from qkv.training.runs import build_run


@dataclass
class ToyConfig(GPTConfig):
    """A family of its own: ALiBi positions, RMSNorm, SwiGLU, no biases by default."""

    positions: str = "alibi"
    norm: str = "rms"
    feed_forward: str = "swiglu"
    bias: bool = False
    embedding_scale: float = 2.0


class ToyLM(GPT):
    """Scales its token embeddings (so it computes something no built-in family does)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        with torch.no_grad():
            self.token_embedding.weight.mul_(config.embedding_scale)


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))  # registered for this test only
    return register_family(Family("toy-lm", ToyConfig, ToyLM, CAUSAL_LM))


def test_a_family_added_by_registration_alone_trains_saves_loads_generates_and_shows_attention(toy_family, tmp_path):
    config_file = tmp_path / "toy.toml"
    config_file.write_text(
        'kind = "toy-lm"\n[model]\nnum_layers = 2\nnum_heads = 2\nembed_dim = 16\nmax_seq_len = 16\n'
        "embedding_scale = 3.0\n[train]\nsteps = 4\nbatch_size = 4\neval_interval = 4\neval_iters = 1\n"
        'checkpoint_interval = 4\nprecision = "fp32"\n'
    )
    config = load_run_config(config_file)
    assert isinstance(config.model, ToyConfig) and config.model.embedding_scale == 3.0
    model, task, tokenizer = build_run(config)
    assert isinstance(model, ToyLM) and task.kind == "toy-lm"
    metrics = Trainer(model, task, config.train, tmp_path / "run", tokenizer, config.to_dict(), progress=False).fit()
    assert math.isfinite(metrics["val_loss"])

    loaded, tokenizer, info = load_causal_lm(tmp_path / "run")
    assert isinstance(loaded, ToyLM) and info.kind == "toy-lm" and family_of(loaded) is toy_family
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    prompt = torch.tensor([tokenizer.encode("Ham")])
    out = qkv.generate(loaded, prompt, max_new_tokens=8)
    assert out.shape == (1, 11) and torch.equal(out, qkv.generate(loaded, prompt, max_new_tokens=8, use_cache=False))
    with qkv.capture_attention(loaded) as captured:
        loaded(out)
    weights = captured.weights(1)
    assert weights.shape == (1, 2, 11, 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 11))
    assert not weights.triu(1).any()  # causal
    with pytest.raises(CheckpointError, match="'toy-lm' model, but this needs a sequence-to-sequence model"):
        load_seq2seq(tmp_path / "run")


def test_the_registry_answers(toy_family):
    import qkv.pretrained  # noqa: F401  # (registers the HF converters with the registry)
    from qkv.models.families import hf_format
    from qkv.pretrained.llama import llama_from_hf

    assert get_family("llama").config is LlamaConfig
    assert family_for_hf("mistral") is get_family("llama") and family_for_hf("t5") is None
    assert hf_format(get_family("llama")).reader is llama_from_hf and hf_format(get_family("bert")).writer is None
    with pytest.raises(ConfigError, match="family 'transformer' reads and writes no HuggingFace checkpoints"):
        hf_format(get_family("transformer"))
    assert family_of(GPT(LlamaConfig(embed_dim=16, num_heads=2))) is get_family("llama")
    assert family_of(GPT(GPTConfig(embed_dim=16, num_heads=2))) is get_family("gpt")
    with pytest.raises(ConfigError, match="did you mean 'toy-lm'"):
        get_family("toy_lm")
    with pytest.raises(ConfigError, match="already registered"):
        register_family(Family("toy-lm", ToyConfig, ToyLM, CAUSAL_LM))
    with pytest.raises(ConfigError, match="kind 'bert' is not trained by qkv train"):
        RunConfig(kind="bert")
