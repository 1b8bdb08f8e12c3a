"""Bad input across the CLI verbs: one clear line on stderr, exit code 2, no traceback (``--debug`` shows it)."""

from __future__ import annotations

import pytest

from qkv.cli import main
from tests.cli.test_cli import run_dir  # noqa: F401 - the trained tiny run, shared


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok.toml").write_text("[train]\nsteps = 2\n")
    (tmp_path / "bad.toml").write_text("[train\nsteps = 2\n")
    return tmp_path


CASES = [
    # train
    ("train", lambda r, f: ["train", str(f / "nope.toml")], "does not exist"),
    ("train", lambda r, f: ["train", str(f / "dir")], "does not exist (it is a directory)"),
    ("train", lambda r, f: ["train", str(f / "bad.toml")], "not valid TOML"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.stpes=1"], "did you mean 'steps'"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.lr=fast"], "must be a float"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "steps=1"], "section.key"),
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", f"data.path={f / 'empty.txt'}", "--out", str(f / "o1")],
        "is empty",
    ),
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", f"data.path={f / 'latin1.txt'}", "--out", str(f / "o2")],
        "is not UTF-8",
    ),
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", f"data.path={f / 'dir'}", "--out", str(f / "o3")],
        "is a directory",
    ),
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", "model.positions='absolute'", "--out", str(f / "o4")],
        "model.positions must be one of",
    ),
    # generate
    ("generate", lambda r, f: ["generate", str(f / "dir"), "--prompt", "x"], "holds no qkv checkpoint"),
    ("generate", lambda r, f: ["generate", str(f / "empty.txt"), "--prompt", "x"], "is a file"),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", ""], "prompt is empty"),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "→"], "never saw in training"),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "a", "--temperature", "0"], "temperature must be > 0"),
    # embed
    ("embed", lambda r, f: ["embed", "--file", str(f / "nope.txt")], "does not exist"),
    ("embed", lambda r, f: ["embed", "--file", str(f / "latin1.txt")], "is not UTF-8"),
    ("embed", lambda r, f: ["embed", "--file", str(f / "empty.txt")], "is empty"),
    ("embed", lambda r, f: ["embed", "x", "--out", str(f / "e.csv")], "must end in .npy or .jsonl"),
    ("embed", lambda r, f: ["embed", "x", "--model", str(r)], "no config.json"),
    # attention
    ("attention", lambda r, f: ["attention", str(f / "nope"), "x", "--png", str(f / "a.png")], "does not exist"),
    ("attention", lambda r, f: ["attention", str(r), "", "--png", str(f / "a.png")], "prompt is empty"),
    (
        "attention",
        lambda r, f: ["attention", str(r), "Ham.", "--png", str(f / "a.png"), "--head", "1"],
        "--head needs --layer",
    ),
    # bench
    ("bench", lambda r, f: ["bench", "attention", "--long", "0"], "must be >= 1"),
]


@pytest.mark.parametrize(("verb", "make_args", "fragment"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_matrix(run_dir, files, capsys, verb, make_args, fragment):  # noqa: F811
    capsys.readouterr()
    assert main(make_args(run_dir, files)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert fragment in err[0] and "Traceback" not in err[0]
    assert err[0].startswith(f"qkv {verb}: error:")


def test_debug_shows_the_traceback(files):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "train", str(files / "nope.toml")])
