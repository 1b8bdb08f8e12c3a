"""GPT-2-format checkpoints <-> :class:`qkv.models.GPT`, through an explicit key map.

GPT-2 stores its linear layers as ``Conv1D`` with weights ``(in, out)``: they are transposed on the way in and out,
and the fused ``c_attn`` is split into our q/k/v projections (and stacked back on save).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from qkv.errors import CheckpointError, ConfigError
from qkv.models.blocks import Activation
from qkv.models.gpt import GPT, GPTConfig
from qkv.pretrained.weights import load_into

__all__ = ["gpt2_from_hf", "save_gpt2"]

PLAIN = {  # qkv name -> HF name, per layer
    "norm1": "ln_1",
    "norm2": "ln_2",
}
CONV1D = {
    "attn.out_proj": "attn.c_proj",
    "ffn.up": "mlp.c_fc",
    "ffn.down": "mlp.c_proj",
}
ACTIVATIONS: dict[str, Activation] = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"activation_function {act!r} is not supported; known: {', '.join(ACTIVATIONS)}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise CheckpointError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            max_seq_len=hf.get("n_positions", 1024),
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            embed_dim=hf["n_embd"],
            ffn_dim=hf.get("n_inner") or 4 * hf["n_embd"],
            positions="learned",
            linear_bias=True,
            activation=ACTIVATIONS[act],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    except KeyError as exc:
        raise CheckpointError(f"config.json lacks {exc.args[0]!r}, which a GPT-2 config needs") from None


def gpt2_from_hf(hf_config: dict[str, Any], state: dict[str, Tensor], source: Path) -> GPT:
    config = config_from_hf(hf_config)
    model = GPT(config)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    names: dict[str, str] = {
        "token_embedding.weight": "transformer.wte.weight",
        "position_embedding.embedding.weight": "transformer.wpe.weight",
        "final_norm.weight": "transformer.ln_f.weight",
        "final_norm.bias": "transformer.ln_f.bias",
    }
    mapped: dict[str, Tensor] = {}

    def take(hf_key: str) -> Tensor | None:
        return state.get(hf_key.removeprefix("transformer."))

    for ours, theirs in list(names.items()):
        if (t := take(theirs)) is not None:
            mapped[ours] = t
    d = config.embed_dim
    for i in range(config.num_layers):
        prefix = f"h.{i}."
        for ours, theirs in PLAIN.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{p}"] = f"transformer.{prefix}{theirs}.{p}"
                if (t := state.get(prefix + f"{theirs}.{p}")) is not None:
                    mapped[f"blocks.{i}.{ours}.{p}"] = t
        for ours, theirs in CONV1D.items():
            names[f"blocks.{i}.{ours}.weight"] = f"transformer.{prefix}{theirs}.weight"
            names[f"blocks.{i}.{ours}.bias"] = f"transformer.{prefix}{theirs}.bias"
            if (w := state.get(prefix + f"{theirs}.weight")) is not None:
                mapped[f"blocks.{i}.{ours}.weight"] = w.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)
            if (b := state.get(prefix + f"{theirs}.bias")) is not None:
                mapped[f"blocks.{i}.{ours}.bias"] = b
        w, b = state.get(prefix + "attn.c_attn.weight"), state.get(prefix + "attn.c_attn.bias")
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            names[f"blocks.{i}.attn.{proj}.weight"] = f"transformer.{prefix}attn.c_attn.weight"
            names[f"blocks.{i}.attn.{proj}.bias"] = f"transformer.{prefix}attn.c_attn.bias"
            if w is not None and w.shape == (d, 3 * d):
                mapped[f"blocks.{i}.attn.{proj}.weight"] = w[:, j * d : (j + 1) * d].t().contiguous()
            elif w is not None:
                mapped[f"blocks.{i}.attn.{proj}.weight"] = w  # wrong shape: reported by load_into
            if b is not None and b.shape == (3 * d,):
                mapped[f"blocks.{i}.attn.{proj}.bias"] = b[j * d : (j + 1) * d]
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
        if "lm_head.weight" in state:
            mapped["lm_head.weight"] = state["lm_head.weight"]
    else:
        mapped["lm_head.weight"] = mapped.get("token_embedding.weight")  # type: ignore[assignment]  # (tied: present)
        if mapped["lm_head.weight"] is None:
            del mapped["lm_head.weight"]
    load_into(model, mapped, source, names)
    return model.eval()


def save_gpt2(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained`` loads."""
    c = model.config
    reverse = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
    problems = []
    if c.positions != "learned":
        problems.append(f"positions={c.positions!r} (GPT-2 has learned positions)")
    if not c.linear_bias:
        problems.append("linear_bias=False (GPT-2 has biases)")
    if c.num_kv_heads not in (None, c.num_heads):
        problems.append("grouped-query attention")
    if not c.tie_embeddings:
        problems.append("untied embeddings")
    if problems:
        raise ConfigError("this GPT cannot be written in GPT-2 format: " + "; ".join(problems))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": sd["token_embedding.weight"],
        "transformer.wpe.weight": sd["position_embedding.embedding.weight"],
        "transformer.ln_f.weight": sd["final_norm.weight"],
        "transformer.ln_f.bias": sd["final_norm.bias"],
    }
    for i in range(c.num_layers):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in PLAIN.items():
            for s in ("weight", "bias"):
                out[f"{q}{theirs}.{s}"] = sd[f"{p}{ours}.{s}"]
        for ours, theirs in CONV1D.items():
            out[f"{q}{theirs}.weight"] = sd[f"{p}{ours}.weight"].t()
            out[f"{q}{theirs}.bias"] = sd[f"{p}{ours}.bias"]
        out[f"{q}attn.c_attn.weight"] = torch.cat(
            [sd[f"{p}attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]
        ).t()
        out[f"{q}attn.c_attn.bias"] = torch.cat([sd[f"{p}attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])
    save_file(
        {k: v.contiguous() for k, v in out.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.max_seq_len,
        "n_ctx": c.max_seq_len,
        "n_embd": c.embed_dim,
        "n_layer": c.num_layers,
        "n_head": c.num_heads,
        "n_inner": c.ffn_dim,
        "activation_function": reverse[c.activation],
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": True,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
