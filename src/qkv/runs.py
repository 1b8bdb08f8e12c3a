"""Loading a trained run (or checkpoint) by its model family: a causal LM with its tokenizer, a sequence-to-sequence
model with its pair tokenizer, an image model; and any model a verb reads, a run or a HuggingFace-format directory.
The CLI and the tour both load runs through here, so neither imports the other for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from torch import nn

from qkv.errors import CheckpointError, ConfigError
from qkv.models.families import CAUSAL_LM, IMAGE, SEQ2SEQ, Family, get_family
from qkv.models.inference import for_inference
from qkv.models.pixels import PixelModel
from qkv.tokenizers import PairTokenizer, Tokenizer
from qkv.training.checkpoint import CheckpointInfo, load_checkpoint_info

__all__ = ["load_causal_lm", "load_image_model", "load_model_and_tokenizer", "load_seq2seq"]


def load_causal_lm(
    path: str | Path, device: str | None = None, dtype: str | None = None
) -> tuple[nn.Module, Tokenizer, CheckpointInfo]:
    """A trained causal LM (GPT, Llama, or any registered family), its tokenizer and checkpoint info from a run or
    checkpoint directory, on ``device`` (default: the CPU) in ``dtype`` (``"fp32" | "bf16" | "fp16" | "int8" |
    "auto"``, :func:`qkv.models.inference.for_inference`; default: fp32). Checkpoints hold no
    device: one trained on a GPU loads anywhere."""
    info = load_checkpoint_info(path)
    family = _family_of_checkpoint(info, CAUSAL_LM)
    model = family.build(family.config.from_dict(info.meta["config"]["model"]))
    info.load_model_weights(model)
    return for_inference(model, device, dtype), info.tokenizer(), info


def load_seq2seq(
    path: str | Path, device: str | None = None, dtype: str | None = None
) -> tuple[nn.Module, PairTokenizer, CheckpointInfo]:
    """A trained RNN or Transformer encoder-decoder, its pair tokenizer and checkpoint info, on ``device`` in
    ``dtype`` (as :func:`load_causal_lm`)."""
    from qkv.training.config import RunConfig

    info = load_checkpoint_info(path)
    family = _family_of_checkpoint(info, SEQ2SEQ)
    model = family.build(RunConfig.from_dict(info.meta["config"]).model)
    info.load_model_weights(model)
    tokenizer = info.tokenizer()
    if not isinstance(tokenizer, PairTokenizer):
        raise CheckpointError(f"{info.path}/tokenizer.json is not a source/target (pair) tokenizer")
    return for_inference(model, device, dtype), tokenizer, info


def load_image_model(path: str | Path, device: str | None = None) -> tuple[PixelModel, CheckpointInfo]:
    """A trained image model (PixelCNN, MADE, pixel Transformer, ...) and its checkpoint info, on ``device``."""
    from qkv.training.config import RunConfig

    info = load_checkpoint_info(path)
    family = _family_of_checkpoint(info, IMAGE)
    model = family.build(RunConfig.from_dict(info.meta["config"]).model)
    info.load_model_weights(model)
    return cast(PixelModel, for_inference(model, device)), info  # (IMAGE: every image family is a PixelModel)


def load_model_and_tokenizer(
    model_ref: str | Path, device: str | None = None, dtype: str | None = None, protocol: str | None = None
) -> tuple[nn.Module, Any, bool]:
    """``(model, tokenizer, pretrained)`` for a qkv run or checkpoint directory, a HuggingFace-format directory or a
    bundled name; ``pretrained`` says which of the last two it was. ``protocol``: the kind of model the verb needs
    (e.g. a causal LM to generate from), checked for pretrained models too."""
    path = Path(model_ref)
    if path.is_dir() and not (path / "config.json").is_file():  # a qkv run or checkpoint, or nothing qkv reads
        if not ((path / "checkpoints").is_dir() or (path / "trainer.json").is_file()):
            raise CheckpointError(
                f"{path} holds no qkv checkpoint (no checkpoints/latest and no trainer.json) and is not a "
                "HuggingFace-format model directory (no config.json)"
            )
        model, tokenizer, _ = load_causal_lm(path, device, dtype)
        return model, tokenizer, False
    from qkv.models.families import family_of
    from qkv.pretrained import load_pretrained, load_tokenizer

    model = load_pretrained(model_ref, device=device, dtype=dtype)
    family = family_of(model)
    if protocol is not None and family.protocol != protocol:
        raise CheckpointError(f"{model_ref} holds a {family.name} model ({family.protocol}); this needs a {protocol}")
    return model, load_tokenizer(model_ref), True


# what each kind of model is for, named in the refusal when a run goes to the wrong verb
WANTED = {
    CAUSAL_LM: "a language model (causal LM)",
    SEQ2SEQ: "a sequence-to-sequence model",
    IMAGE: "an image model",
}
VERBS_FOR = {
    CAUSAL_LM: "qkv generate, qkv attention or qkv heads",
    SEQ2SEQ: "qkv translate",
    IMAGE: "qkv sample or qkv field",
}
TRAIN_ONE = {CAUSAL_LM: "qkv quickstart", SEQ2SEQ: "qkv train dates-rnn", IMAGE: "qkv train digits-pixelcnn"}


def _family_of_checkpoint(info: CheckpointInfo, protocol: str) -> Family:
    try:
        family = get_family(info.kind, what="model kind")
    except ConfigError as exc:
        raise CheckpointError(f"{info.path} holds a model qkv does not know: {exc}") from None
    if family.protocol != protocol:
        raise CheckpointError(
            f"{info.path} holds a {info.kind!r} model, but this needs {WANTED[protocol]}; for this run use "
            f"{VERBS_FOR.get(family.protocol, 'the verb of its kind')} (to train one this verb reads: "
            f"{TRAIN_ONE[protocol]})"
        )
    return family
