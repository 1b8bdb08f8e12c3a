"""``qkv.load_pretrained`` / ``qkv.load_tokenizer`` / ``save_pretrained``: HuggingFace-format directories."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from qkv.errors import CheckpointError, ConfigError
from qkv.models.families import family_for_hf, family_of, hf_format, hf_model_types
from qkv.models.inference import for_inference
from qkv.pretrained.calibration import calibration_feed
from qkv.pretrained.tokenizer import PretrainedTokenizer
from qkv.pretrained.weights import read_config, read_state_dict, resolve_pretrained

__all__ = ["load_pretrained", "load_tokenizer", "save_pretrained"]


def load_pretrained(
    path_or_name: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    calibration: Sequence[str] | None = None,
) -> nn.Module:
    """A qkv model from a HuggingFace-format directory (BERT, GPT-2, Llama, Mistral, Qwen2: any ``model_type`` a
    registered family reads) or a bundled name (``"minilm"``).

    Reads ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin`` with ``weights_only=True``); maps every
    weight through an explicit key table; never downloads, never executes code from the directory. The model is put
    on ``device`` (``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``; default: the CPU) in ``dtype`` (``"fp32" |
    "bf16" | "fp16" | "int8" | "auto"``, :func:`qkv.models.inference.for_inference`; default: fp32).

    ``calibration`` (int8 only): texts the fp32 model reads once (each alone, with the directory's tokenizer) so its
    int8 weights are rounded by GPTQ rather than to nearest — closer to fp32, same speed. A few hundred lines like
    the ones the model will see suffice (:data:`~qkv.pretrained.calibration.CALIBRATION_LINES`).
    """
    directory = resolve_pretrained(path_or_name)
    config = read_config(directory)
    model_type = config.get("model_type")
    family = family_for_hf(model_type)
    if family is None:
        raise CheckpointError(
            f"{directory / 'config.json'} describes model_type {model_type!r}; qkv loads {', '.join(hf_model_types())}"
        )
    model = hf_format(family).reader(config, read_state_dict(directory), directory)
    feed = None
    if calibration is not None:
        context = getattr(getattr(model, "config", None), "max_seq_len", None)
        feed = calibration_feed(load_tokenizer(directory), calibration, context)
    return for_inference(model, device, dtype, calibrate=feed)


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
    """Write a qkv model as a HuggingFace-format directory that ``transformers`` loads, in its family's format:
    GPT-2 for a GPT; Llama, Mistral or Qwen2 for a Llama-family model (:class:`~qkv.models.llama.LlamaConfig`)."""
    try:
        writer = hf_format(family_of(model)).writer
        if writer is None:
            raise ConfigError(f"family {family_of(model).name!r} reads HuggingFace checkpoints but writes none")
    except ConfigError as exc:
        raise CheckpointError(f"save_pretrained cannot write this {type(model).__name__}: {exc}") from None
    return Path(writer(model, directory))
