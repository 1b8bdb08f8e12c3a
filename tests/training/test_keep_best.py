"""train.keep_best: a run ends with the weights of its lowest val loss (qkv.training.best), on one process, on two
(DDP) and after a resume; refused by name under FSDP."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qkv.errors import ConfigError
from qkv.training import Trainer, load_checkpoint_info, load_run_config
from qkv.training.distributed import DistributedContext
from qkv.training.lm import build_lm
from tests.training.test_trainer import TINY, _train_cli, make_trainer


def test_keep_best_ends_with_the_weights_of_the_lowest_val_loss(tmp_path, monkeypatch):
    """Scripted val losses (lowest at step 4 of 12): the final checkpoint holds exactly step 4's weights (its own
    checkpoint, written before), metrics report step 4's evaluation, and a resumed trainer knows that best."""
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # evaluations at steps 2, 4, ..., 12
    real_evaluate = Trainer.evaluate

    def evaluate(self):
        out = real_evaluate(self)
        return {**out, "val_loss": next(scripted)}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    overrides = ["train.keep_best=true", "train.eval_interval=2", "train.checkpoint_interval=2"]
    overrides.append("train.keep_checkpoints=9")
    trainer = make_trainer(tmp_path, overrides)
    metrics = trainer.fit()
    assert metrics["best_step"] == 4 and metrics["val_loss"] == 2.0 and metrics["steps"] == 12
    model = build_lm(load_run_config(None, TINY))[0]
    final = load_checkpoint_info(tmp_path).model_state(model)
    at_best = load_checkpoint_info(tmp_path / "checkpoints" / "step-0000004").model_state(model)
    at_10 = load_checkpoint_info(tmp_path / "checkpoints" / "step-0000010").model_state(model)
    for name, value in at_best.items():
        assert torch.equal(final[name], value), name
    assert any(not torch.equal(final[n], v) for n, v in at_10.items())  # (the weights did move after step 4)
    resumed = make_trainer(tmp_path, overrides)
    assert resumed.resume() == 12 and resumed.best.step == 4 and resumed.best.evaluation["val_loss"] == 2.0


def test_keep_best_with_fsdp_is_refused_by_name(tmp_path, monkeypatch):
    """Nothing is started: the refusal comes before any process group is needed."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_run_config(None, [*TINY, "train.keep_best=true", "train.parallel='fsdp'"])
    model, task, tok = build_lm(config)
    two = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ConfigError, match=r"keep_best .*\(fsdp\)"):
        Trainer(model, task, config.train, tmp_path, tok, config.to_dict(), dist_ctx=two, progress=False)


def test_keep_best_under_ddp_ends_with_the_lowest_val_loss_of_the_run(tmp_path):
    """Two DDP processes (rank 0 evaluates and writes best.safetensors, every process loads it at the end): the run
    finishes, its metrics are the evaluation with the lowest val loss in its log, and the final checkpoint holds
    exactly the kept weights (a high lr makes the val loss wander, so the kept step is rarely the last)."""
    overrides = ["train.keep_best=true", "train.eval_interval=2", "train.lr=3e-2", "train.min_lr=3e-2"]
    result = _train_cli(tmp_path, "two", overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "two"
    metrics = json.loads((run / "metrics.json").read_text())
    evaluations = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lowest = min((e for e in evaluations if "val_loss" in e), key=lambda e: e["val_loss"])
    assert metrics["best_step"] == lowest["step"] and metrics["val_loss"] == lowest["val_loss"]
    model = build_lm(load_run_config(None, TINY))[0]
    final = load_checkpoint_info(run).model_state(model)
    best = load_file(run / "best.safetensors")
    assert all(torch.equal(final[name], best[name]) for name in best)
