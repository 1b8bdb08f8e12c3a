"""qkv train on a seq2seq config, then qkv translate: output lines, beam search, the alignment PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qkv.cli import main

ROOT = Path(__file__).parent.parent.parent
TINY = [
    "data.train_size=400",
    "data.eval_size=8",
    "train.steps=6",
    "train.batch_size=8",
    "train.eval_interval=3",
    "train.eval_iters=1",
    "train.checkpoint_interval=3",
    "model.embed_dim=16",
    "model.hidden_dim=32",
]


def train(out: Path, *overrides: str) -> Path:
    sets = [arg for item in (*TINY, *overrides) for arg in ("--set", item)]
    assert main(["train", str(ROOT / "configs" / "dates-rnn.toml"), "--out", str(out), "--no-progress", *sets]) == 0
    return out


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory) -> Path:
    """Luong attention with the location score: the one RNN variant with a source-length limit (64 tokens)."""
    return train(tmp_path_factory.mktemp("seq2seq"), "model.score='location'")


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("baseline"), "model.attention='none'")


def test_translate_prints_one_line_per_text_and_draws_the_alignment(seq2seq_dir, tmp_path, capsys):
    capsys.readouterr()
    png = tmp_path / "align.png"
    args = ["translate", str(seq2seq_dir), "March 5, 2021", "2021년 3월 5일", "--show-attention", str(png)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2:] == [
        f"alignment: {tmp_path / 'align-1.png'}",
        f"alignment: {tmp_path / 'align-2.png'}",
    ]
    for name in ("align-1.png", "align-2.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 200 and len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank


def test_translate_reads_a_file_and_beam_search(seq2seq_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("March 5, 2021\n\n5 Mar 21\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["translate", str(seq2seq_dir), "--file", str(tmp_path / "in.txt"), "--strategy", "beam"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # blank lines are skipped
