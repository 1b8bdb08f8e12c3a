"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of a run directory::

    RUN/checkpoints/step-0000500/{model,optimizer,rng}.safetensors, trainer.json, tokenizer.json
    RUN/checkpoints/latest          # the name of the newest complete checkpoint

A checkpoint is written into ``step-XXXXXXX.tmp-...`` first, every file flushed to disk, and only then renamed into
place; ``latest`` is replaced with ``os.replace``. A crash at any moment leaves the previous checkpoint intact and
never a half-written one under a final name; an old checkpoint is renamed away before it is deleted, so neither is
a half-deleted one. ``latest`` always names a complete checkpoint. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from qkv.errors import CheckpointError
from qkv.tokenizers import Tokenizer, load_tokenizer_file

__all__ = [
    "CheckpointInfo",
    "load_checkpoint_info",
    "load_weights",
    "restore_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_weights",
    "weights_metadata",
]

FORMAT = "qkv-checkpoint"
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json", "tokenizer.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Second names of tied tensors (e.g. a head sharing the embedding's weight) -> the first name."""
    first: dict[int, str] = {}
    tied = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        tied[name] = first.setdefault(id(tensor), name)
    return {name: original for name, original in tied.items() if name != original}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    keep: int = 2,
    *,
    model_state: dict[str, Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically and prune all but the ``keep`` newest.

    ``model_state`` and ``optimizer_state`` default to the model's and optimizer's ``state_dict()``; a sharded run
    passes the full states it gathered (see :mod:`qkv.training.sharding`). A tied tensor is stored once.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = _temporary_name(final)
    tmp.mkdir()
    state = model.state_dict() if model_state is None else model_state
    tied = _tied_names(model)
    save_file(
        {name: t.detach().contiguous() for name, t in state.items() if name not in tied}, str(tmp / "model.safetensors")
    )
    tensors, groups = _optimizer_tensors(optimizer.state_dict() if optimizer_state is None else optimizer_state)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rngs = {"torch": torch.get_rng_state()}
    device = next(model.parameters()).device
    if device.type == "cuda":  # dropout on the GPU draws from the GPU's generator
        rngs["cuda"] = torch.cuda.get_rng_state(device)
    save_file(rngs, str(tmp / "rng.safetensors"))
    tokenizer.save(tmp / "tokenizer.json")
    _write_json(tmp / "trainer.json", {"format": FORMAT, "version": 1, "step": step, "param_groups": groups, **meta})
    _fsync_checkpoint(tmp)
    if final.exists():
        # The same step written again (a resumed run interrupted where it started, a fresh run in an old directory).
        # ``latest`` names the complete new copy, untouched, while the old one is removed and a second copy takes the
        # final name: renaming the directory ``latest`` names would leave it dangling for a moment.
        _set_latest(root, tmp.name)
        _remove(final)
        staged, tmp = tmp, _temporary_name(final)
        shutil.copytree(staged, tmp)
        _fsync_checkpoint(tmp)
    os.rename(tmp, final)
    _set_latest(root, final.name)
    # Only now, with ``latest`` naming the new checkpoint, are leftovers of a writer killed mid-write or mid-delete
    # surely unused (a killed replacement may have left ``latest`` naming its temporary directory).
    for stale in root.glob("*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and ".tmp-" not in p.name and p != final)
    for old in steps[: max(len(steps) - (keep - 1), 0)]:
        _remove(old)
    return final


def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Write the model's weights (a tied tensor once) and ``metadata`` to the safetensors file ``path`` atomically: a
    temporary file beside it, flushed, then renamed over it (a run's best weights, ``RUN/best.safetensors``)."""
    path = Path(path)
    tied = _tied_names(model)
    tmp = _temporary_name(path)
    try:
        state = {name: t.detach().contiguous() for name, t in model.state_dict().items() if name not in tied}
        save_file(state, str(tmp), metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load weights written by :func:`save_weights` into ``model``; CheckpointError names the file when it is
    unreadable or does not fit the model."""
    model.load_state_dict(_read_model_state(Path(path), model))


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata :func:`save_weights` stored with the weights in ``path``."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {exc}") from None


def _read_model_state(file: Path, model: nn.Module) -> dict[str, Tensor]:
    """The stored weights as a full ``state_dict`` for ``model`` (tied names filled in), checked to fit it."""
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{file} is corrupt or not a safetensors file: {exc}") from None
    for name, original in _tied_names(model).items():
        if original in state or name in state:  # (older files may hold a tie under either name)
            state[name] = state.setdefault(original, state.get(name))  # type: ignore[arg-type]  # (one of the two is present)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"{file} does not fit the model: shapes differ: {', '.join(wrong[:3])}")
    return state


def _fsync_checkpoint(path: Path) -> None:
    """Flush a checkpoint directory's files and entries to disk, so that a rename publishes only complete data."""
    for name in FILES:
        with open(path / name, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def _temporary_name(path: Path) -> Path:
    """A fresh name beside ``path`` that the next save treats as a leftover (unique even if a PID is reused)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{time.time_ns()}")


def _set_latest(root: Path, name: str) -> None:
    """Point ``root/latest`` at checkpoint ``name`` atomically and durably."""
    latest_tmp = root / f"latest.tmp-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory so that no half-deleted one is ever left under a checkpoint's name: renamed to a
    temporary name first (atomic), then deleted; a crash in between leaves a leftover the next save removes."""
    doomed = _temporary_name(path)
    os.rename(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory, its ``checkpoints/`` folder, or the checkpoint itself."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():
        raise CheckpointError(f"{path} is a file; give a run directory or a checkpoint directory (step-...)")
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            target = root / latest.read_text().strip()
            if not target.is_dir():
                raise CheckpointError(f"{latest} points to {target.name}, which is missing")
            return target
    if (path / "trainer.json").exists():
        return path
    raise CheckpointError(f"{path} holds no qkv checkpoint (no checkpoints/latest and no trainer.json)")


@dataclass
class CheckpointInfo:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer_file(self.path / "tokenizer.json")

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The stored weights as a full ``state_dict`` for ``model`` (tied names filled in), checked to fit it."""
        return _read_model_state(self.path / "model.safetensors", model)

    def load_model_weights(self, model: nn.Module) -> None:
        model.load_state_dict(self.model_state(model))


def load_checkpoint_info(path: str | Path, kind: str | None = None) -> CheckpointInfo:
    """Resolve and validate a checkpoint: every file present, metadata readable, of the expected ``kind``."""
    ckpt = resolve_checkpoint(path)
    for name in FILES:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {name} is missing")
    try:
        meta = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{ckpt / 'trainer.json'} is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "step" not in meta:
        raise CheckpointError(f"{ckpt / 'trainer.json'} is not a qkv checkpoint description")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{ckpt} holds a {meta.get('kind')!r} model, but a {kind!r} model is needed here")
    return CheckpointInfo(ckpt, meta)


def restore_training_state(
    info: CheckpointInfo,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | None = None,
    sharded: bool = False,
) -> None:
    """Load model weights, optimizer state and the RNG states of a checkpoint (onto the model's device: a checkpoint
    written on a GPU resumes on a CPU and vice versa; the GPU's RNG state is restored only on a GPU). ``sharded``:
    the model and optimizer are FSDP's, and each process loads its shard of the full state."""
    model_state = info.model_state(model)
    if not sharded:
        model.load_state_dict(model_state)
    try:
        tensors = load_file(str(info.path / "optimizer.safetensors"))
        rngs = load_file(str(info.path / "rng.safetensors"))
        rng = rngs["torch"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"optimizer or RNG state in {info.path} is corrupt: {exc}") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    try:
        optimizer_state = {"state": state, "param_groups": info.meta["param_groups"]}
        if sharded:
            from qkv.training.sharding import load_full_state

            load_full_state(model, optimizer, model_state, optimizer_state)
        else:
            optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state in {info.path} does not fit this model: {exc}") from None
    torch.set_rng_state(rng)
    if device is not None and device.type == "cuda" and "cuda" in rngs:
        torch.cuda.set_rng_state(rngs["cuda"], device)
