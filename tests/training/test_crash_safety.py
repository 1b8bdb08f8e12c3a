"""Crash safety: training killed with SIGKILL at random moments always resumes from a valid checkpoint, and the final
model equals an uninterrupted run's, bit for bit. Ctrl-C (SIGINT) saves a checkpoint and exits cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qkv.training import load_checkpoint_info
from tests.conftest import interruptible

TINY = [
    "train.precision='fp32'",  # runs are compared number for number: no measured choice of precision
    "model.num_layers=1",
    "model.num_heads=2",
    "model.embed_dim=32",
    "model.max_seq_len=16",
    "model.dropout=0.1",
    "train.batch_size=4",
    "train.eval_interval=200",
    "train.eval_iters=1",
    "train.checkpoint_interval=25",
    "train.keep_checkpoints=2",
    "train.warmup_steps=3",
]


def _command(tmp: Path, out: Path, resume: bool, steps: int) -> list[str]:
    data = tmp / "data.txt"
    if not data.exists():
        data.write_text("To be, or not to be, that is the question:\n" * 200)
        (tmp / "empty.toml").write_text("")
    args = [
        sys.executable,
        "-m",
        "qkv.cli",
        "train",
        str(tmp / "empty.toml"),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"data.path={data}",
    ]
    for item in [*TINY, f"train.steps={steps}"]:
        args += ["--set", item]
    return args + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _final_weights(out: Path, steps: int) -> dict[str, torch.Tensor]:
    info = load_checkpoint_info(out)
    assert info.step == steps
    return load_file(str(info.path / "model.safetensors"))


def _check_every_checkpoint(out: Path) -> int | None:
    """Every complete checkpoint loads; returns the latest step (None before the first)."""
    root = out / "checkpoints"
    if not (root / "latest").exists():
        return None
    info = load_checkpoint_info(out)  # validates the files and trainer.json
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        load_file(str(info.path / name))  # raises on a corrupt or truncated file
    for ckpt in root.glob("step-*"):
        if ".tmp-" not in ckpt.name:
            load_file(str(ckpt / "model.safetensors"))
    return info.step


def _latest_step(out: Path) -> int:
    try:
        return int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return -1


def _kill_until_done(tmp: Path, kills: int, seed: int, steps: int) -> tuple[Path, int]:
    """Start, kill, resume, ... ``kills`` times, then let the last run finish.

    Each kill waits until the run has written one new checkpoint (so every attempt makes progress, on any machine),
    then a random 0-0.4 s more: the SIGKILL lands anywhere in the following steps, checkpoint writes included.
    """
    rng = random.Random(seed)
    out = tmp / "killed"
    survived = 0
    while True:
        step = _check_every_checkpoint(out)
        if step == steps:
            return out, survived
        proc = subprocess.Popen(
            _command(tmp, out, resume=step is not None, steps=steps),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if survived < kills:
            start, deadline = _latest_step(out), time.time() + 120
            while _latest_step(out) == start and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                survived += 1
        proc.wait(timeout=600)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-2000:]


def _crash_run(tmp_path: Path, kills: int, seed: int, steps: int) -> None:
    reference = tmp_path / "straight"
    command = _command(tmp_path, reference, resume=False, steps=steps)
    done = subprocess.run(command, env=_env(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out, survived = _kill_until_done(tmp_path, kills, seed, steps)
    assert survived == kills, f"only {survived} of {kills} kills landed before the run finished"
    expected, got = _final_weights(reference, steps), _final_weights(out, steps)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs from the uninterrupted run"


def test_sigkill_a_few_times_then_identical_model(tmp_path):
    _crash_run(tmp_path, kills=3, seed=0, steps=800)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_twenty_times_then_identical_model(tmp_path, seed):
    _crash_run(tmp_path, kills=20, seed=seed, steps=4000)


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    command = _command(tmp_path, out, resume=False, steps=100000)
    proc = interruptible(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text[-2000:]
    assert "checkpoint saved" in text and "Traceback" not in text
    step = _check_every_checkpoint(out)
    assert step is not None and step > 0
