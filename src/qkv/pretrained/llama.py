"""Llama-family checkpoints (``model_type`` llama, mistral, qwen2) <-> :class:`qkv.models.GPT` with a
:class:`~qkv.models.llama.LlamaConfig`, through an explicit key map. Both spellings of RoPE settings are read:
``rope_parameters`` (transformers 5) and ``rope_theta`` + ``rope_scaling`` (earlier files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from qkv.attention.positional import RopeScaling
from qkv.errors import CheckpointError, ConfigError
from qkv.models.gpt import GPT
from qkv.models.llama import LlamaConfig
from qkv.pretrained.weights import load_into

__all__ = ["LLAMA_TYPES", "llama_from_hf", "save_llama"]

LLAMA_TYPES = ("llama", "mistral", "qwen2")
ARCHITECTURE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
LAYER_KEYS = {  # qkv name -> HF name, per layer (weights; the q/k/v biases follow their weights)
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.q_proj.bias": "self_attn.q_proj.bias",
    "attn.k_proj.bias": "self_attn.k_proj.bias",
    "attn.v_proj.bias": "self_attn.v_proj.bias",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "ffn.gate.weight": "mlp.gate_proj.weight",
    "ffn.up.weight": "mlp.up_proj.weight",
    "ffn.down.weight": "mlp.down_proj.weight",
}
GLOBAL_KEYS = {
    "token_embedding.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings as one dict (``rope_theta``, ``rope_type``, ``factor``, ...) from either spelling."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params.update({k: v for k, v in legacy.items() if k not in params})
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def config_from_hf(hf: dict[str, Any]) -> LlamaConfig:
    model_type = hf.get("model_type")
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r} (the family uses silu)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention_bias/mlp_bias (biases in every projection)")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        problems.append("Qwen2's use_sliding_window (a window on some layers only)")
    if hf.get("pretraining_tp", 1) not in (1, None):
        problems.append("pretraining_tp > 1")
    rope = _rope(hf)
    kind = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}.get(rope["rope_type"])
    if kind is None:
        problems.append(f"rope_type {rope['rope_type']!r} (qkv has default, linear, dynamic and llama3)")
    try:
        heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
        if hf.get("head_dim") not in (None, hidden // heads):
            problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
        if problems:
            raise CheckpointError(f"this {model_type} checkpoint is not supported: " + "; ".join(problems))
        max_seq_len = hf.get("max_position_embeddings", 2048)
        factor = float(rope.get("factor", 1.0))
        return LlamaConfig(
            vocab_size=hf["vocab_size"],
            # dynamic scaling exists to run past the trained context: allow factor x as long
            max_seq_len=int(max_seq_len * factor) if kind == "dynamic" else max_seq_len,
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            embed_dim=hidden,
            ffn_dim=hf["intermediate_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else None,
            rope_theta=float(rope["rope_theta"]),
            rope=None
            if kind in (None, "none")  # (None: refused above)
            else RopeScaling(
                kind,
                factor,
                int(rope.get("original_max_position_embeddings") or (max_seq_len if kind == "dynamic" else 0)),
                float(rope.get("low_freq_factor", 1.0)),
                float(rope.get("high_freq_factor", 4.0)),
            ),
            sliding_window=hf.get("sliding_window") if model_type == "mistral" else None,
        )
    except KeyError as exc:
        raise CheckpointError(f"config.json lacks {exc.args[0]!r}, which a {model_type} config needs") from None


def _names(config: LlamaConfig) -> dict[str, str]:
    """Every qkv key of the model -> its HF key."""
    names = dict(GLOBAL_KEYS)
    for i in range(config.num_layers):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_KEYS.items()})
    return names


def llama_from_hf(hf_config: dict[str, Any], state: dict[str, Tensor], source: Path) -> GPT:
    config = config_from_hf(hf_config)
    model = GPT(config)
    names = _names(config)
    mapped = {ours: state[theirs] for ours, theirs in names.items() if theirs in state}
    if config.tie_embeddings and "token_embedding.weight" in mapped:
        mapped["lm_head.weight"] = mapped["token_embedding.weight"]
    load_into(model, mapped, source, names)
    return model.eval()


def model_type_of(config: LlamaConfig) -> str:
    """The HF family a Llama-style config belongs to: q/k/v biases are Qwen2's, a sliding window Mistral's."""
    if config.qkv_bias and config.sliding_window is not None:
        raise ConfigError("no HF family has both q/k/v biases and a sliding window on every layer")
    if config.qkv_bias:
        return "qwen2"
    return "mistral" if config.sliding_window is not None else "llama"


def save_llama(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` that ``transformers``' ``AutoModelForCausalLM``
    loads (Llama, Mistral or Qwen2, by :func:`model_type_of`)."""
    c = model.config
    problems = []
    if c.positions != "rotary" or c.norm != "rms" or c.feed_forward != "swiglu" or c.linear_bias:
        problems.append("the Llama family has rotary positions, RMSNorm, SwiGLU and no biases outside q/k/v")
    if c.qkv_bias is False or (c.qkv_bias is None and c.linear_bias):
        problems.append("inconsistent biases")
    if problems:
        raise ConfigError("this GPT cannot be written as a Llama-family checkpoint: " + "; ".join(problems))
    model_type = model_type_of(c)  # type: ignore[arg-type]  # (a GPTConfig with Llama's settings)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    names = _names(c)  # type: ignore[arg-type]  # (a GPTConfig with Llama's settings)
    tensors = {theirs: state[ours].detach().contiguous() for ours, theirs in names.items() if ours in state}
    if c.tie_embeddings:
        del tensors["lm_head.weight"]
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    scaling = c.rope
    rope: dict[str, Any] = {"rope_theta": c.rope_theta, "rope_type": "default" if scaling is None else scaling.kind}
    if scaling is not None:
        rope["factor"] = scaling.factor
    if scaling is not None and scaling.kind == "llama3":
        rope.update(
            low_freq_factor=scaling.low_freq_factor,
            high_freq_factor=scaling.high_freq_factor,
            original_max_position_embeddings=scaling.original_max_seq_len,
        )
    max_positions = c.max_seq_len
    if scaling is not None and scaling.kind == "dynamic":
        max_positions = scaling.original_max_seq_len
    hf = {
        "architectures": [ARCHITECTURE[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.embed_dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads or c.num_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "rope_parameters": rope,
        "rope_theta": c.rope_theta,
        "attention_dropout": c.dropout,
    }
    if model_type == "mistral":
        hf["sliding_window"] = c.sliding_window
    if model_type == "qwen2":
        hf["use_sliding_window"] = False
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    return directory
