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
from qkv.training.config import fsdp_runs_on_cpus
from qkv.training.lm import build_lm

TINY = [
    "train.precision='fp32'",  # runs are compared number for number: no measured choice of precision
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
    with pytest.raises(ConfigError, match="must be an integer"):
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


@pytest.mark.parametrize("pack", [False, True], ids=["windows", "packed documents"])
def test_resume_after_interruption_gives_the_same_losses(tmp_path, pack):
    overrides = ["data.pack=true"] if pack else []
    straight = make_trainer(tmp_path / "a", overrides)
    straight.fit()
    interrupted = make_trainer(tmp_path / "b", overrides)
    real_step = interrupted._train_step

    def stop_after_seven() -> float:
        if interrupted.step == 7:
            raise KeyboardInterrupt
        return real_step()

    interrupted._train_step = stop_after_seven  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        interrupted.fit()
    resumed = make_trainer(tmp_path / "b", overrides)
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


def _train_cli(tmp_path: Path, out: str, overrides=(), processes: int = 1, resume: bool = False):
    """``qkv train`` in a subprocess on the TINY config (no dropout), under torchrun when ``processes`` > 1."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    sets = sum((["--set", o] for o in [*TINY, "model.dropout=0.0", *overrides]), [])
    cli = ["-m", "qkv.cli", "train", str(config), "--no-progress", *sets, "--out", str(tmp_path / out)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(
        [sys.executable, *(launcher if processes > 1 else []), *cli, *(["--resume"] if resume else [])],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


FSDP_ON_CPU = pytest.mark.skipif(not fsdp_runs_on_cpus(), reason="FSDP2 on CPUs needs torch 2.6 (refused by name)")


# FSDP's two processes also run in the default suite, in the resume test below; this comparison is the slow job's
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=[FSDP_ON_CPU, pytest.mark.slow])])
def test_two_processes_match_one_process(tmp_path, parallel):
    """Same global batch (4 rows = 2 x 2), DDP or FSDP: losses agree to 1e-5 relative (only the summation order of
    the gradient reduction differs), and so do the final weights; FSDP's checkpoint is the full model, in the same
    files as a one-process run's."""
    one = _train_cli(tmp_path, "one")
    assert one.returncode == 0, one.stderr
    two = _train_cli(tmp_path, "two", [f"train.parallel='{parallel}'"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["parallel"] == parallel
    weights = {
        run: load_checkpoint_info(tmp_path / run).model_state(build_lm(load_run_config(None, TINY))[0])
        for run in ("one", "two")
    }
    for name, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][name], value, rtol=1e-4, atol=1e-5)


@FSDP_ON_CPU
def test_fsdp_resumes_bit_for_bit_and_its_checkpoint_loads_anywhere(tmp_path):
    """Two FSDP processes train 12 steps; a copy of the run cut back to its step-8 checkpoint (as if killed after
    it) resumes under FSDP to the same step-12 weights, optimizer state and losses, bit for bit."""
    straight = _train_cli(tmp_path, "a", ["train.parallel='fsdp'", "train.keep_checkpoints=3"], processes=2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    root = tmp_path / "b" / "checkpoints"
    root.mkdir(parents=True)
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000008", root / "step-0000008")
    (root / "latest").write_text("step-0000008")
    log = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    (tmp_path / "b" / "log.jsonl").write_text("".join(line + "\n" for line in log[:8]))
    resumed = _train_cli(tmp_path, "b", ["train.parallel='fsdp'"], processes=2, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    from safetensors.torch import load_file

    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "a" / "checkpoints" / "step-0000012" / name)
        b = load_file(tmp_path / "b" / "checkpoints" / "step-0000012" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the sharded run's checkpoint resumes in one ordinary process too
    single = make_trainer(tmp_path / "a", ["model.dropout=0.0", "train.steps=13"])
    assert single.resume() == 12
    single.fit()
    assert math.isfinite(single.history[-1]["loss"])


def test_fsdp_without_torchrun_is_refused(tmp_path):
    result = _train_cli(tmp_path, "run", ["train.parallel='fsdp'"])
    assert result.returncode == 2
    assert "train.parallel = 'fsdp'" in result.stderr and "torchrun" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="must be one of ddp, fsdp"):
        load_run_config(None, ["train.parallel='zero3'"])


def test_bf16_autocast_trains_close_to_fp32_and_is_recorded(tmp_path):
    """bf16 autocast really runs in bf16: its losses are near the fp32 run's but not equal to them; metrics.json
    records the precision and the CPU it ran on."""
    spelling = ["train.precision='bf16'"]
    steps = ["train.steps=3", "train.eval_interval=3", "model.dropout=0.0"]
    fp32 = make_trainer(tmp_path / "fp32", steps)
    fp32.fit()
    bf16 = make_trainer(tmp_path / "bf16", steps + spelling)
    metrics = bf16.fit()
    assert metrics["precision"] == "bf16" and metrics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert metrics["device"] == "cpu"
    a, b = [h["loss"] for h in fp32.history], [h["loss"] for h in bf16.history]
    assert a != b and max(abs(x - y) for x, y in zip(a, b)) < 0.05


def test_precision_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.bf16'"):  # (0.1's spelling of precision)
        make_trainer(tmp_path, ["train.bf16=true"])
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        make_trainer(tmp_path, ["train.precision='fp16'", "train.device='cpu'"])
    with pytest.raises(ConfigError, match="'half' is not a precision"):
        make_trainer(tmp_path, ["train.precision='half'"])
    assert not any(tmp_path.iterdir()), "a refused run wrote files"


def test_auto_precision_is_the_hardwares_choice_and_never_timed(tmp_path, monkeypatch):
    """auto decides by the hardware alone (bf16 where the CPU has native bf16 units, fp32 elsewhere), so a busy
    machine makes the same choice as a quiet one: nothing is timed."""
    import qkv.devices as devices

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "native_cpu_bf16", lambda native=native: native)
        trainer = make_trainer(tmp_path / expected, ["train.precision='auto'", "train.device='cpu'", "train.steps=2"])
        monkeypatch.setattr(trainer, "_measure_precision", lambda: pytest.fail("auto must not time anything"))
        assert trainer.fit()["precision"] == expected


def test_tuned_precision_is_measured_once_and_kept_by_a_resumed_run(tmp_path, monkeypatch):
    """tune, on a CPU with native bf16, times bf16 against fp32 and keeps bf16 only when it is faster; the choice
    is recorded in the checkpoint, and a resumed run uses it instead of measuring again."""
    import qkv.devices as devices

    monkeypatch.setattr(devices, "native_cpu_bf16", lambda: True)
    assert devices.precision_candidates("tune", torch.device("cpu")) == ["bf16", "fp32"]
    trainer = make_trainer(tmp_path, ["train.precision='tune'", "train.device='cpu'", "train.steps=4"])
    measured = []
    monkeypatch.setattr(trainer, "_measure_precision", lambda: measured.append(1) or "bf16")
    assert trainer.fit()["precision"] == "bf16" and measured == [1]
    resumed = make_trainer(tmp_path, ["train.precision='tune'", "train.device='cpu'", "train.steps=6"])
    monkeypatch.setattr(resumed, "_measure_precision", lambda: measured.append(2) or "fp32")
    resumed.resume()
    assert resumed.fit()["precision"] == "bf16" and measured == [1]


def test_measuring_precision_changes_nothing(tmp_path, monkeypatch):
    import qkv.devices as devices

    monkeypatch.setattr(devices, "native_cpu_bf16", lambda: True)
    trainer = make_trainer(tmp_path, ["train.precision='tune'", "train.device='cpu'"])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    assert trainer._measure_precision() in ("bf16", "fp32")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in trainer.model.parameters())


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
    name = tmp_path.name
    last_eval = re.findall(rf"{name} step 6/6: train loss [\d.]+, val loss ([\d.]+)", printed.out + printed.err)
    assert last_eval, printed
    final_bar = printed.err.rstrip().split("\r")[-1]
    assert f"val={last_eval[-1]}" in final_bar, final_bar


def test_the_fp16_loss_scale_is_kept_across_a_resume(tmp_path):
    """fp16 runs only on GPUs, but its GradScaler state is plain: an enabled scaler's adapted scale (here doubled
    after every step) is written into the checkpoint and restored, not reset to its initial value."""
    trainer = make_trainer(tmp_path, ["train.steps=4", "model.dropout=0.0"])
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    trainer.fit()
    assert trainer.scaler.get_scale() == 2.0**8
    resumed = make_trainer(tmp_path, ["train.steps=4", "model.dropout=0.0"])
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1)
    resumed.resume()
    assert resumed.scaler.get_scale() == 2.0**8
    assert resumed.scaler.state_dict()["_growth_tracker"] == trainer.scaler.state_dict()["_growth_tracker"]


def test_a_run_that_diverges_before_its_first_checkpoint_leaves_no_directory(tmp_path):
    """A new run directory that would hold nothing but a failure is removed; one that existed before is kept."""
    from qkv.errors import TrainingDivergedError

    overrides = ["train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=0", "train.checkpoint_interval=1000",
                 "model.dropout=0.0", "train.steps=50"]  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet"):
        make_trainer(tmp_path / "new" / "run", overrides).fit()
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(TrainingDivergedError):
        make_trainer(tmp_path / "mine", overrides).fit()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's"


def test_a_quiet_trainer_prints_nothing_and_evaluation_lines_name_the_run(tmp_path, capfd):
    make_trainer(tmp_path / "silent", ["train.steps=2", "train.eval_interval=1"], quiet=True).fit()
    assert capfd.readouterr().out == ""
    make_trainer(tmp_path / "named", ["train.steps=2", "train.eval_interval=1"]).fit()
    assert re.findall(r"^named step (\d)/2: train loss [\d.]+, val loss [\d.]+$", capfd.readouterr().out, re.M) == [
        "1", "2",
    ]  # fmt: skip


def test_fsdp_on_cpus_with_a_torch_too_old_for_it_is_refused_by_name(monkeypatch):
    monkeypatch.setattr("qkv.training.config.fsdp_runs_on_cpus", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="fsdp' on the CPU needs torch 2.6 or newer.*use train.parallel = 'ddp'"):
        load_run_config(None, ["train.parallel='fsdp'", "train.device='cpu'"])
