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
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from qkv.errors import CheckpointError
from qkv.tokenizers import Tokenizer, load_tokenizer_file

__all__ = ["CheckpointInfo", "load_checkpoint_info", "restore_training_state", "resolve_checkpoint", "save_checkpoint"]

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


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically and prune all but the ``keep`` newest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = _temporary_name(final)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    tensors, groups = _optimizer_tensors(optimizer)
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

    def load_model_weights(self, model: nn.Module) -> None:
        try:
            missing, unexpected = load_model(model, str(self.path / "model.safetensors"), strict=False)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'} is corrupt or not a safetensors file: {exc}"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"{self.path / 'model.safetensors'} does not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )


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
    info: CheckpointInfo, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | None = None
) -> None:
    """Load model weights, optimizer state and the RNG states of a checkpoint (onto the model's device: a checkpoint
    written on a GPU resumes on a CPU and vice versa; the GPU's RNG state is restored only on a GPU)."""
    info.load_model_weights(model)
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
        optimizer.load_state_dict({"state": state, "param_groups": info.meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state in {info.path} does not fit this model: {exc}") from None
    torch.set_rng_state(rng)
    if device is not None and device.type == "cuda" and "cuda" in rngs:
        torch.cuda.set_rng_state(rngs["cuda"], device)
