"""HuggingFace BERT / MiniLM checkpoints -> :class:`qkv.models.BertEncoder`, through an explicit key map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from qkv.errors import CheckpointError
from qkv.models.bert import BertConfig, BertEncoder
from qkv.models.blocks import Activation
from qkv.pretrained.weights import load_into

__all__ = ["bert_from_hf"]

ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}

# qkv name -> HF name (per layer: {i})
EMBEDDINGS = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
LAYER = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense",
    "norm2": "output.LayerNorm",
}


def config_from_hf(hf: dict[str, Any]) -> BertConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported (absolute)")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"hidden_act {act!r} is not supported; known: {', '.join(ACTIVATIONS)}")
    try:
        return BertConfig(
            vocab_size=hf["vocab_size"],
            embed_dim=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=ACTIVATIONS[act],
            pad_token_id=hf.get("pad_token_id", 0) or 0,
        )
    except KeyError as exc:
        raise CheckpointError(f"config.json lacks {exc.args[0]!r}, which a BERT config needs") from None


def key_map(num_layers: int) -> dict[str, str]:
    names = dict(EMBEDDINGS)
    for i in range(num_layers):
        for ours, theirs in LAYER.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return names


def bert_from_hf(hf_config: dict[str, Any], state: dict[str, Tensor], source: Path) -> BertEncoder:
    config = config_from_hf(hf_config)
    model = BertEncoder(config)
    # some checkpoints prefix every key with "bert." (BertForX heads); the encoder's keys are the same below it
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    names = key_map(config.num_layers)
    mapped = {ours: state[theirs] for ours, theirs in names.items() if theirs in state}
    load_into(model, mapped, source, names)
    return model.eval()
