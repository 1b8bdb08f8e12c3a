"""The configs qkv ships: found by name from any directory, listed, shown and copied out (the wheel carries them:
tests/packaging)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qkv.cli import main
from qkv.training.bundled import bundled_configs, config_summary

CONFIGS = Path(__file__).parent.parent.parent / "src" / "qkv" / "configs"


def test_every_config_file_is_listed_shown_and_copied_as_it_is(tmp_path, capsys):
    files = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    assert list(bundled_configs()) == files and len(files) >= 14
    capsys.readouterr()
    assert main(["configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[: len(files)]]
    assert listed == files
    assert main(["configs", "show", "dates-rnn"]) == 0
    assert capsys.readouterr().out == (CONFIGS / "dates-rnn.toml").read_text(encoding="utf-8")
    copy = tmp_path / "mine.toml"
    assert main(["configs", "cp", "gpt-baby", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == (CONFIGS / "gpt-baby.toml").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.toml"]  # (the writability probe is gone)
    hint = capsys.readouterr().out.split("edit it, then: ", 1)[1].rstrip().rstrip(")")
    assert hint == f"qkv train {copy}"
    # the hint, pasted as printed (a step cap appended, as the README's trainings are in the suite)
    caps = ["--set", "train.steps=2", "--set", "train.eval_iters=1", "--no-progress", "--out", str(tmp_path / "run")]
    proc = subprocess.run(
        [sys.executable, "-m", "qkv.cli", *hint.split()[1:], *caps], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


def test_a_name_or_a_configs_path_trains_from_outside_the_repository(tmp_path):
    """From a directory with no configs/ folder, ``qkv train gpt-baby`` and ``qkv train configs/gpt-baby.toml``
    both read the shipped file, and the run goes to runs/gpt-baby as for a path in the repository."""
    caps = ["--set", "train.steps=2", "--set", "train.eval_iters=1", "--no-progress"]
    for ref, out in (("gpt-baby", "runs/gpt-baby"), ("configs/gpt-baby.toml", "runs/other")):
        cmd = [sys.executable, "-m", "qkv.cli", "train", ref, *caps, *(["--out", out] if out.endswith("other") else [])]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / out / "metrics.json").exists()


def test_the_list_survives_a_reader_that_stops_early(tmp_path):
    proc = subprocess.run(
        f"{sys.executable} -m qkv.cli configs | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("dates-rnn") and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_configs_summary_is_its_first_sentence_whatever_its_citations():
    """ "et al." and "e.g." do not end the sentence `qkv configs` shows (MADE (Germain et al. 2015) on ...)."""
    summary = config_summary(bundled_configs()["mnist-made"], width=200)
    assert summary.startswith("MADE (Germain et al. 2015) on binarized MNIST:") and summary.endswith(".")
    assert config_summary(bundled_configs()["mnist-pixelrnn"]) == (
        "A pixel RNN with positions on binarized MNIST (784 steps per image)."
    )
