"""Checkpoint writes under a crash at every file-system step: ``latest`` always names a complete checkpoint that holds
the weights of its step, no directory under a checkpoint's name is ever half-written or half-deleted, and the next save
cleans up what the crash left. The SIGKILL test (test_crash_safety.py) checks the same at random moments in a real run;
this one visits every moment of a save deterministically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qkv.tokenizers import CharTokenizer
from qkv.training import checkpoint as checkpoint_module
from qkv.training import load_checkpoint_info, save_checkpoint


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no ``except Exception`` swallows it)."""


class CrashAt:
    """Make the ``crash_at``-th file-system step of a save die: a rename or replace that never happens, or a tree
    removal that dies after deleting one file (a kill in the middle of ``shutil.rmtree``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, crash_at: int) -> None:
        self.count, self.crash_at = 0, crash_at
        real_rename, real_replace, real_rmtree = os.rename, os.replace, shutil.rmtree

        def step() -> bool:
            self.count += 1
            return self.count == self.crash_at

        def rename(src, dst):  # type: ignore[no-untyped-def]
            if step():
                raise Crash
            real_rename(src, dst)

        def replace(src, dst):  # type: ignore[no-untyped-def]
            if step():
                raise Crash
            real_replace(src, dst)

        def rmtree(path, ignore_errors=False):  # type: ignore[no-untyped-def]
            if step():
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                if files:
                    files[0].unlink()
                raise Crash
            real_rmtree(path, ignore_errors=ignore_errors)

        monkeypatch.setattr(checkpoint_module.os, "rename", rename)
        monkeypatch.setattr(checkpoint_module.os, "replace", replace)
        monkeypatch.setattr(checkpoint_module.shutil, "rmtree", rmtree)


def _save(run: Path, step: int, keep: int = 2) -> None:
    """A checkpoint whose weights all equal ``step``, so a loaded one shows which step it really holds."""
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(run, step, model, optimizer, CharTokenizer.train("abc"), {"kind": "test"}, keep=keep)


def _check_invariants(run: Path) -> int:
    """``latest`` names a complete checkpoint of the step it claims; every checkpoint-named directory is complete."""
    info = load_checkpoint_info(run)
    for name in checkpoint_module.FILES:
        assert (info.path / name).is_file(), f"{info.path.name} lacks {name}"
    assert torch.all(load_file(str(info.path / "model.safetensors"))["weight"] == info.step)
    for ckpt in (run / "checkpoints").glob("step-*"):
        if ".tmp-" not in ckpt.name:
            assert sorted(p.name for p in ckpt.iterdir()) == sorted(checkpoint_module.FILES), ckpt.name
            assert torch.all(load_file(str(ckpt / "model.safetensors"))["weight"] == int(ckpt.name.split("-")[1]))
    return info.step


@pytest.mark.parametrize(
    "history, step",
    [
        ([10, 20], 30),  # a new step: write, point latest, prune the oldest
        ([10, 20], 20),  # the same step again (a run interrupted where it resumed): replace the one latest names
    ],
    ids=["new-step", "same-step"],
)
def test_a_crash_at_any_step_of_a_save_leaves_a_valid_latest(tmp_path, monkeypatch, history, step):
    crash_at = 1
    while True:
        run = tmp_path / f"crash-{crash_at}"
        for earlier in history:
            _save(run, earlier)
        with monkeypatch.context() as patch:
            crasher = CrashAt(patch, crash_at)
            try:
                _save(run, step)
                crashed = False
            except Crash:
                crashed = True
        assert _check_invariants(run) in (history[-1], step)
        if not crashed:
            assert _check_invariants(run) == step
            break
        # the next save (the resumed run's) recovers: no leftovers, latest names it
        _save(run, step + 100)
        assert _check_invariants(run) == step + 100
        assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
        crash_at += 1
    assert crasher.count >= 4, "the save took fewer file-system steps than expected; did the injection miss?"


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    """A run started over in an old directory writes step 10 while steps 50 and 60 exist: step 10 is what latest names,
    so it survives pruning (sorting by step alone would delete it and leave latest dangling)."""
    run = tmp_path / "run"
    for step in (50, 60, 10):
        _save(run, step)
    assert _check_invariants(run) == 10
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000010", "step-0000060"]
