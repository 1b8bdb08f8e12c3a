"""Training: configs and overrides, the schedule, resume after an interruption, atomic checkpoints, torchrun parity."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkv.errors import CheckpointError, ConfigError
from qkv.training import TrainConfig, Trainer, load_checkpoint_info, load_run_config, lr_at
from qkv.training.lm import build_lm

TINY = [
    "model.num_layers=2",
    "model.num_heads=2",
    "model.embed_dim=32",
    "model.max_seq_len=32",
    "model.dropout=0.1",  # exercises the RNG state across a resume
    "train.batch_size=4",
    "train.steps=12",
    "train.eval_interval=6",
    "train.eval_iters=2",
    "train.checkpoint_interval=4",
    "train.log_interval=1",
    "train.warmup_steps=3",
]


def make_trainer(out: Path, overrides=(), **kw) -> Trainer:
    config = load_run_config(None, TINY + list(overrides))
    model, task, tok = build_lm(config)
    return Trainer(model, task, config.train, out, tok, config.to_dict(), progress=False, **kw)


def test_overrides_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_run_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="must be a int"):
        load_run_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*'train'"):
        load_run_config(None, ["trian.steps=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_run_config(None, ["train.steps"])
    config = load_run_config(None, ["train.lr=3", "data.path=some file.txt", "model.num_kv_heads=2"])
    assert config.train.lr == 3.0 and config.data.path == "some file.txt" and config.model.num_kv_heads == 2


def test_toml_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nsteps = 7\n[model]\npositions = 'rotary'\n")
    config = load_run_config(tmp_path / "c.toml", ["train.steps=9"])
    assert config.train.steps == 9 and config.model.positions == "rotary"
    (tmp_path / "bad.toml").write_text("[train]\nsteps = 7\nwhatever = 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.whatever'"):
        load_run_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "none.toml")


def test_learning_rate_schedule_by_hand():
    c = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, c) == pytest.approx(1 / 11)
    assert lr_at(9, c) == pytest.approx(10 / 11)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert lr_at(110, c) == pytest.approx(0.1)


def test_resume_after_interruption_gives_the_same_losses(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.fit()
    interrupted = make_trainer(tmp_path / "b")
    real_step = interrupted._train_step

    def stop_after_seven() -> float:
        if interrupted.step == 7:
            raise KeyboardInterrupt
        return real_step()

    interrupted._train_step = stop_after_seven  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        interrupted.fit()
    resumed = make_trainer(tmp_path / "b")
    assert resumed.resume() == 7
    resumed.fit()
    losses = [r["loss"] for r in straight.history]
    assert [r["loss"] for r in resumed.history] == losses  # bit for bit
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["val_loss"] == b["val_loss"] and b["steps"] == 12
    assert {"steps", "val_loss", "ms_per_iter", "tokens_per_s"} <= set(b)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    trainer = make_trainer(tmp_path, ["train.keep_checkpoints=2"])
    trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-0000008", "step-0000012"]
    # a crash mid-write leaves only a .tmp directory: it is never taken for a checkpoint
    (root / "step-0000016.tmp-999").mkdir()
    assert load_checkpoint_info(tmp_path).step == 12
    # corrupt files are named in the error
    model_file = root / "step-0000012" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        make_trainer(tmp_path).resume()
    (root / "step-0000012" / "trainer.json").write_text("{")
    with pytest.raises(CheckpointError, match="trainer.json is corrupt"):
        load_checkpoint_info(tmp_path)
    os.remove(root / "step-0000012" / "tokenizer.json")
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        load_checkpoint_info(tmp_path)


def test_trained_loss_goes_down(tmp_path):
    trainer = make_trainer(tmp_path, ["train.steps=40", "train.lr=3e-3", "model.dropout=0.0"])
    metrics = trainer.fit()
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"] - 0.5
    assert metrics["val_loss"] < 3.5 and metrics["tokens_per_s"] > 0


def test_two_process_torchrun_matches_one_process(tmp_path):
    """Same global batch (4 rows = 2 x 2): losses agree to 1e-5 relative; only the gradient all-reduce's summation
    order differs between the two runs."""
    args = ["train", "unused.toml", "--no-progress", *sum((["--set", o] for o in TINY + ["model.dropout=0.0"]), [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the CLI reads no config file when none exists? it does: write an empty one
    (tmp_path / "unused.toml").write_text("")
    args[1] = str(tmp_path / "unused.toml")
    one = subprocess.run(
        [sys.executable, "-m", "qkv.cli", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "qkv.cli",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    log = lambda d: [json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = log("one"), log("two")
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2


def test_bf16_autocast_runs(tmp_path):
    trainer = make_trainer(tmp_path, ["train.steps=2", "train.bf16=true", "train.eval_interval=2"])
    assert math.isfinite(trainer.fit()["val_loss"])
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_last_good_checkpoint(tmp_path):
    """lr 1e30 without warm-up or clipping: the loss becomes NaN within a few steps. Training stops with
    TrainingDivergedError, never applies or saves the bad update, and writes no metrics.json with a NaN in it."""
    from qkv.errors import TrainingDivergedError

    overrides = ["train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=0", "train.checkpoint_interval=1"]
    trainer = make_trainer(tmp_path, overrides + ["model.dropout=0.0", "train.steps=50"])
    with pytest.raises(TrainingDivergedError, match=r"the training loss became (nan|inf) at step (\d+)") as info:
        trainer.fit()
    bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert f"last good checkpoint is {tmp_path / 'checkpoints'}" in str(info.value)
    assert not (tmp_path / "metrics.json").exists()
    latest = load_checkpoint_info(tmp_path)
    assert latest.step == bad_step - 1
    model, _, _ = build_lm(load_run_config(None, TINY))
    latest.load_model_weights(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), "the bad update was applied"


def test_the_progress_bar_shows_the_evaluation_of_its_own_step(tmp_path, capfd):
    trainer = make_trainer(
        tmp_path,
        ["train.steps=6", "train.eval_interval=3"],
    )
    trainer.progress = True
    trainer.fit()
    printed = capfd.readouterr()
    last_eval = re.findall(r"step 6: train [\d.]+, val ([\d.]+)", printed.out + printed.err)
    assert last_eval, printed
    final_bar = printed.err.rstrip().split("\r")[-1]
    assert f"val={last_eval[-1]}" in final_bar, final_bar
