"""``qkv.load_pretrained`` / ``qkv.load_tokenizer`` / ``save_pretrained``: HuggingFace-format directories."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qkv.devices import place
from qkv.errors import CheckpointError
from qkv.models.gpt import GPT
from qkv.models.llama import LlamaConfig
from qkv.pretrained.bert import bert_from_hf
from qkv.pretrained.gpt2 import gpt2_from_hf, save_gpt2
from qkv.pretrained.llama import LLAMA_TYPES, llama_from_hf, save_llama
from qkv.pretrained.tokenizer import PretrainedTokenizer
from qkv.pretrained.weights import read_config, read_state_dict, resolve_pretrained

__all__ = ["load_pretrained", "load_tokenizer", "save_pretrained"]

ARCHITECTURES = {"bert": bert_from_hf, "gpt2": gpt2_from_hf, **{t: llama_from_hf for t in LLAMA_TYPES}}


def load_pretrained(
    path_or_name: str | Path, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> nn.Module:
    """A qkv model (``BertEncoder`` or ``GPT``) from a HuggingFace-format directory or a bundled name (``"minilm"``).

    Reads ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin`` with ``weights_only=True``); maps every
    weight through an explicit key table; never downloads, never executes code from the directory. The model is put
    on ``device`` (``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``; default: the CPU) in ``dtype`` (``"fp32" |
    "bf16" | "fp16"``; default: fp32).
    """
    directory = resolve_pretrained(path_or_name)
    config = read_config(directory)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{directory / 'config.json'} describes model_type {model_type!r}; qkv loads {', '.join(ARCHITECTURES)}"
        )
    return place(ARCHITECTURES[model_type](config, read_state_dict(directory), directory), device, dtype)


def load_tokenizer(path_or_name: str | Path) -> PretrainedTokenizer:
    """The tokenizer of a HuggingFace-format directory or a bundled name, with its model's length limit."""
    directory = resolve_pretrained(path_or_name)
    max_length = 512
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():  # sentence-transformers' own limit (256 for all-MiniLM-L6-v2)
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length", max_length))
    elif (directory / "config.json").is_file():
        max_length = int(read_config(directory).get("max_position_embeddings", max_length))
    return PretrainedTokenizer.from_directory(directory, max_length)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write a qkv GPT as a HuggingFace-format directory that ``transformers`` loads: GPT-2 format for a GPT, Llama,
    Mistral or Qwen2 format for a Llama-family model (:class:`~qkv.models.llama.LlamaConfig`)."""
    if not isinstance(model, GPT):
        raise CheckpointError(f"save_pretrained writes GPT and Llama-family models; got {type(model).__name__}")
    if isinstance(model.config, LlamaConfig):
        return save_llama(model, directory)
    return save_gpt2(model, directory)
