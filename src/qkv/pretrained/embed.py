"""``qkv.embed``: sentence embeddings, mean-pooled over real tokens and L2-normalised, as sentence-transformers does."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.attention.frozen import frozen_weights, new_generation
from qkv.devices import inference_dtype, model_device, resolve_device
from qkv.errors import ConfigError
from qkv.models.bert import BertEncoder
from qkv.pretrained.calibration import bundled_calibration
from qkv.pretrained.loading import load_pretrained, load_tokenizer
from qkv.pretrained.tokenizer import PretrainedTokenizer

__all__ = ["embed"]


@lru_cache(maxsize=4)
def _cached(
    name: str, device: str, dtype: str, calibration: tuple[str, ...] | None
) -> tuple[BertEncoder, PretrainedTokenizer, int]:
    """The encoder, its tokenizer and the encoder's own frozen-weights generation: nobody outside holds this model,
    so its weights never change, and the weight layouts derived for one call (transposed for short inputs, Q/K/V
    stacked) serve every later call — a single sentence would otherwise spend most of its time re-deriving them."""
    model = load_pretrained(name, device=device, dtype=dtype, calibration=calibration)
    if not isinstance(model, BertEncoder):
        raise ConfigError(f"embed needs an encoder (BERT-family) model; {name!r} is a {type(model).__name__}")
    return model, load_tokenizer(name), new_generation()


def embed(
    texts: Sequence[str] | str,
    model: str = "minilm",
    batch_size: int = 32,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    calibration: Sequence[str] | None = None,
) -> Tensor:
    """Embed ``texts`` -> ``(n, dim)`` fp32 on the CPU, each row of unit length.

    Texts are sorted by length so each batch pads little, then returned in the caller's order. The encoder runs on
    ``device`` (``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``) in ``dtype`` (``"auto" | "fp32" | "bf16" |
    "fp16" | "int8"``). ``auto`` is bf16 where the device multiplies bf16 natively (a CPU with AVX512-BF16 or AMX:
    about 2x the sentences per second, cosine >= 0.999 to fp32) and fp32 elsewhere (where bf16 is emulated and
    slower, and refused); ``int8`` holds the linear layers' weights in int8 (CPU only), rounded by GPTQ on
    ``calibration`` — a few hundred texts like the ones to embed — or, by default, on lines of the bundled plays
    (:func:`~qkv.pretrained.calibration.bundled_calibration`). Calibrating takes ~7 s on 2 cores, once per process
    and calibration set.
    """
    if isinstance(calibration, str):
        raise ConfigError("calibration takes a list of texts, not one string")
    if calibration is not None and dtype != "int8":
        raise ConfigError(f"calibration rounds int8 weights; dtype {dtype!r} has none to round (use dtype int8)")
    if dtype == "int8" and calibration is None:
        # GPTQ rather than nearest rounding: embeddings are compared by cosine, and every layer's rounding error
        # reaches them (worst cosine to fp32 over 1,000 other lines of the plays 0.99947, against 0.99808)
        calibration = bundled_calibration()
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("embed takes a list of strings")
    resolved = resolve_device(device, what="device")
    # loaded outside inference mode: its weights stay ordinary tensors
    calibrated = None if calibration is None else tuple(calibration)
    encoder, tokenizer, generation = _cached(model, str(resolved), inference_dtype(dtype, resolved), calibrated)
    if not texts:
        return torch.zeros(0, encoder.config.embed_dim)
    with torch.inference_mode(), frozen_weights(generation):
        return _embed_sorted(texts, encoder, tokenizer, batch_size)


def _embed_sorted(texts: list[str], encoder: BertEncoder, tokenizer: PretrainedTokenizer, batch_size: int) -> Tensor:
    device = model_device(encoder)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), encoder.config.embed_dim)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = (t.to(device) for t in tokenizer.batch([texts[i] for i in rows]))
        hidden = encoder(ids, mask).last_hidden_state.float()  # (batch, seq, dim); pooled in fp32
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        out[rows] = F.normalize(pooled, p=2, dim=-1).cpu()
    return out
