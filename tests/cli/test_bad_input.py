"""Bad input across the CLI verbs: one clear line on stderr, exit code 2, no traceback (``--debug`` shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkv.cli import main
from tests.cli.test_cli import _corrupt, run_dir  # noqa: F401 - the trained tiny run, shared
from tests.cli.test_translate import ROOT, baseline_dir, seq2seq_dir  # noqa: F401 - trained tiny seq2seq runs


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok.toml").write_text("[train]\nsteps = 2\n")
    (tmp_path / "bad.toml").write_text("[train\nsteps = 2\n")
    (tmp_path / "kind.toml").write_text('kind = "seq2seq"\n')
    return tmp_path


CASES = [
    # train
    ("train", lambda r, f: ["train", str(f / "nope.toml")], "does not exist"),
    ("train", lambda r, f: ["train", str(f / "dir")], "does not exist (it is a directory)"),
    ("train", lambda r, f: ["train", str(f / "bad.toml")], "not valid TOML"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.stpes=1"], "did you mean 'steps'"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.lr=fast"], "must be a number"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--set", "steps=1"], "section.key"),
    (  # more than any machine's address space, so refused everywhere (not an allocation that might succeed)
        "train",
        lambda r, f: [
            "train",
            str(f / "ok.toml"),
            "--set",
            "model.embed_dim=10000000000000",
            "--set",
            "model.num_heads=1",
            "--out",
            str(f / "o0"),
        ],  # fmt: skip
        "does not fit in memory",
    ),
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
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "a", "--temperature", "0"], "finite number > 0"),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "a", "--temperature", "nan"], "finite number > 0"),
    (
        "generate",
        lambda r, f: ["generate", str(r), "--prompt", "a", "--max-new-tokens", "999999999999"],
        "needs at least",
    ),
    (
        "generate",
        lambda r, f: ["generate", str(r), "--prompt", "a", "--strategy", "beam", "--num-beams", "100000000"],
        "needs at least",
    ),  # fmt: skip
    # sizes refused before anything is allocated, with the figure
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.batch_size=100000000", "--out", str(f / "o6")],
        "needs at least",
    ),  # fmt: skip
    # non-finite settings
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.lr=nan", "--out", str(f / "o7")],
        "must be a finite number",
    ),
    (
        "train",
        lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.lr=1e400", "--out", str(f / "o7")],
        "must be a finite number",
    ),
    # output paths: a file where a directory is needed, a file in the way, a format that is not written
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--out", str(f / "empty.txt")], "a run needs a directory"),
    ("quickstart", lambda r, f: ["quickstart", "--out", str(f / "empty.txt" / "run")], "is a file, so no directory"),
    ("quickstart", lambda r, f: ["quickstart", "--steps", "0", "--out", str(f / "q")], "train.steps must be >= 1"),
    # embed
    ("embed", lambda r, f: ["embed", "--file", str(f / "nope.txt")], "does not exist"),
    ("embed", lambda r, f: ["embed", "--file", str(f / "latin1.txt")], "is not UTF-8"),
    ("embed", lambda r, f: ["embed", "--file", str(f / "empty.txt")], "is empty"),
    ("embed", lambda r, f: ["embed", "x", "--out", str(f / "e.csv")], "must end in .npy, .jsonl"),
    ("embed", lambda r, f: ["embed", "x", "--model", str(r)], "no config.json"),
    # attention
    ("attention", lambda r, f: ["attention", str(f / "nope"), "x", "--png", str(f / "a.png")], "does not exist"),
    ("attention", lambda r, f: ["attention", str(r), "", "--png", str(f / "a.png")], "TEXT is empty"),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--html", str(f)], "is a directory; give a file name"),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--png", str(f / "x.jpg2")], "must end in .png, .svg"),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--html", str(f / "x.png")], "must end in .html"),
    (
        "attention",
        lambda r, f: ["attention", str(r), "Ham.", "--html", str(f / "empty.txt" / "x.html")],
        "is a file, so nothing can be written under it",
    ),  # fmt: skip
    (
        "attention",
        lambda r, f: ["attention", str(r), "Ham.", "--png", str(f / "a.png"), "--head", "1"],
        "--head needs --layer",
    ),
    # bench
    ("bench", lambda r, f: ["bench", "attention", "--long", "0"], "must be >= 1"),
    # what a new user hit (issue 24): decoding counts, every numeric setting's range, outputs that cannot be written
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "Ham.", "--max-new-tokens", "0"], "must be at least 1"),
    (
        "generate",
        lambda r, f: ["generate", str(r), "--prompt", "Ham.", "--max-new-tokens", "0", "--strategy", "beam"],
        "--max-new-tokens must be at least 1, got 0",
    ),  # fmt: skip
    (
        "generate",
        lambda r, f: ["generate", str(r), "--prompt", "Ham.", "--num-return-sequences", "0"],
        "--num-return-sequences must be an int >= 1, got 0",
    ),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "a", "--temperature", "inf"], "finite number > 0"),
    *[
        ("train", lambda r, f, s=setting: ["train", str(f / "ok.toml"), "--set", s, "--out", str(f / "o9")], message)
        for setting, message in [
            ("train.lr=-1", "train.lr must be > 0, got -1"),
            ("train.beta1=2", "train.beta1 must be in [0, 1), got 2"),
            ("train.beta2=1", "train.beta2 must be in [0, 1), got 1"),
            ("train.min_lr=-1", "train.min_lr must be >= 0, got -1"),
            ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1"),
            ("train.min_lr=0.1", "train.min_lr (0.1) must be <= train.lr (0.001)"),
            ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
            ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
            ("train.seed=-1", "train.seed must be in [0, "),
            ("data.val_fraction=1", "data.val_fraction must be in (0, 1), got 1"),
            ("data.bpe_vocab_size=100", "data.bpe_vocab_size must be >= 257"),
        ]
    ],
    ("train", lambda r, f: ["train", "gpt-bbay"], "does not exist (qkv configs lists the bundled configs)"),
    ("train", lambda r, f: ["train", str(f / "x" / "gpt-baby.toml")], "qkv ships one by that name: use gpt-baby"),
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--out", "/proc/qkv-run"], "the run cannot be written"),
    ("quickstart", lambda r, f: ["quickstart", "--out", "/proc/qkv-run"], "the run cannot be written in /proc"),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--png", "/proc/x.png"], "cannot be written in /proc"),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--html", "/proc/x.html"], "cannot be written in"),
    ("heads", lambda r, f: ["heads", str(r), "Ham.", "--html", "/proc/x.html"], "--html /proc/x.html: the file"),
    ("embed", lambda r, f: ["embed", "x", "--out", "/proc/x.npy"], "--out /proc/x.npy: the file cannot be written"),
    ("tour", lambda r, f: ["tour", "--out", "/proc/t.html"], "--out /proc/t.html: the file cannot be written"),
    (
        "tour",
        lambda r, f: ["tour", "--runs", "/proc/runs", "--out", str(f / "t.html")],
        "--runs /proc/runs/tour: the run cannot be written",
    ),
    ("configs", lambda r, f: ["configs", "cp", "gpt-baby", "/proc/x.toml"], "the file cannot be written"),
    ("configs", lambda r, f: ["configs", "cp", "gpt-baby", str(f / "ok.toml")], "already exists; pass --force"),
    ("configs", lambda r, f: ["configs", "show", "gpt-bbay"], "qkv ships no config called 'gpt-bbay'"),
    # the quickstart checks every argument before its training
    ("quickstart", lambda r, f: ["quickstart", "--prompt", "", "--out", str(f / "q")], "the prompt is empty"),
    ("quickstart", lambda r, f: ["quickstart", "--prompt", "→", "--out", str(f / "q")], "never saw in training"),
    (
        "quickstart",
        lambda r, f: ["quickstart", "--max-new-tokens", "-5", "--out", str(f / "q")],
        "--max-new-tokens must be at least 1 (the sample's length), got -5",
    ),
    ("embed", lambda r, f: ["embed", ""], "a text is empty"),
]


def assert_one_clear_line(args: list[str], verb: str, fragment: str, capsys) -> None:
    capsys.readouterr()
    assert main(args) == 2
    printed = capsys.readouterr()
    err = printed.err.strip().splitlines()
    assert len(err) == 1, err
    assert fragment in err[0] and "Traceback" not in err[0]
    assert err[0].startswith(f"qkv {verb}: error:")
    assert printed.out == "", f"printed before refusing: {printed.out!r}"


@pytest.mark.parametrize(("verb", "make_args", "fragment"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_matrix(run_dir, files, capsys, verb, make_args, fragment):  # noqa: F811
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    assert_one_clear_line(make_args(run_dir, files), verb, fragment, capsys)
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before, "a refused command left files behind"


# translate and seq2seq training: (gpt run, seq2seq run, baseline run, files) -> args
SEQ2SEQ = str(ROOT / "configs" / "dates-rnn.toml")
SEQ2SEQ_CASES = [
    ("translate", lambda g, s, b, f: ["translate", str(f / "nope"), "x"], "does not exist"),
    ("translate", lambda g, s, b, f: ["translate", str(f / "dir"), "x"], "holds no qkv checkpoint"),
    ("translate", lambda g, s, b, f: ["translate", str(f / "empty.txt"), "x"], "is a file"),
    ("translate", lambda g, s, b, f: ["translate", str(_corrupt(s, f)), "x"], "model.safetensors is corrupt"),
    ("translate", lambda g, s, b, f: ["translate", str(g), "x"], "holds a 'gpt' model"),
    ("translate", lambda g, s, b, f: ["translate", str(s)], "nothing to translate"),
    ("translate", lambda g, s, b, f: ["translate", str(s), ""], "is empty"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "March → 5"], "never saw in training"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "1" * 70], "reads at most 64"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "--file", str(f / "latin1.txt")], "is not UTF-8"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "--file", str(f / "nope.txt")], "does not exist"),
    (
        "translate",
        lambda g, s, b, f: ["translate", str(s), "5 Mar 21", "--num-beams", "0", "--strategy", "beam"],
        "--num-beams must be an int >= 1",
    ),  # fmt: skip
    (
        "translate",
        lambda g, s, b, f: ["translate", str(b), "5 Mar 21", "--show-attention", str(f / "a.png")],
        "no attention",
    ),  # fmt: skip
    ("translate", lambda g, s, b, f: ["translate", str(b), "5 Mar 21", "--html", str(f / "a.html")], "no attention"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "5 Mar 21", "--html", str(f)], "is a directory; give"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "x", "--max-new-tokens", "0"], "must be at least 1"),
    ("translate", lambda g, s, b, f: ["translate", str(s), "x", "--html", "/proc/a.html"], "cannot be written"),
    ("generate", lambda g, s, b, f: ["generate", str(s), "--prompt", "x"], "holds a 'rnn-seq2seq' model"),
    ("train", lambda g, s, b, f: ["train", SEQ2SEQ, "--set", "model.scroe=dot"], "did you mean 'score'"),
    (
        "train",
        lambda g, s, b, f: ["train", SEQ2SEQ, "--set", "data.task='time'", "--out", str(f / "o5")],
        "unknown data.task 'time'",
    ),  # fmt: skip
    ("train", lambda g, s, b, f: ["train", str(f / "kind.toml")], "unknown kind 'seq2seq'"),
]


@pytest.mark.parametrize(
    ("verb", "make_args", "fragment"), SEQ2SEQ_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SEQ2SEQ_CASES)]
)
def test_bad_input_matrix_seq2seq(run_dir, seq2seq_dir, baseline_dir, files, capsys, verb, make_args, fragment):  # noqa: F811
    assert_one_clear_line(make_args(run_dir, seq2seq_dir, baseline_dir, files), verb, fragment, capsys)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image-run")
    assert main(["train", "digits-independent", "--out", str(out), "--no-progress", "--set", "train.steps=2"]) == 0
    return out


# image runs: (gpt run, image run, files) -> args
IMAGE_CASES = [
    ("sample", lambda g, i, f: ["sample", str(i), "--temperature", "nan"], "temperature must be a finite number > 0"),
    ("sample", lambda g, i, f: ["sample", str(i), "--temperature", "inf"], "temperature must be a finite number > 0"),
    ("sample", lambda g, i, f: ["sample", str(i), "--n", "1000000000"], "1000000000 images of 8x8 pixels with 17"),
    ("sample", lambda g, i, f: ["sample", str(i), "--png", "/proc/s.png"], "--png /proc/s.png: the file cannot"),
    ("sample", lambda g, i, f: ["sample", str(g)], "for this run use qkv generate, qkv attention or qkv heads"),
    ("field", lambda g, i, f: ["field", str(i), "--pixel", "1,1", "--html", "/proc/f.html"], "cannot be written"),
    ("generate", lambda g, i, f: ["generate", str(i), "--prompt", "a"], "for this run use qkv sample or qkv field"),
    ("attention", lambda g, i, f: ["attention", str(i), "a", "--png", str(f / "a.png")], "use qkv sample or qkv"),
    ("heads", lambda g, i, f: ["heads", str(i), "a"], "for this run use qkv sample or qkv field"),
    ("translate", lambda g, i, f: ["translate", str(i), "a"], "for this run use qkv sample or qkv field"),
    ("quickstart", lambda g, i, f: ["quickstart", "--out", str(i)], "for this run use qkv sample or qkv field"),
]


@pytest.mark.parametrize(
    ("verb", "make_args", "fragment"), IMAGE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(IMAGE_CASES)]
)
def test_bad_input_matrix_images(run_dir, image_dir, files, capsys, verb, make_args, fragment):  # noqa: F811
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    assert_one_clear_line(make_args(run_dir, image_dir, files), verb, fragment, capsys)
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before, "a refused command left files behind"


def test_debug_shows_the_traceback(files):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "train", str(files / "nope.toml")])


DEVICE_CASES = [
    ("train", lambda r, f: ["train", str(f / "ok.toml"), "--device", "{d}", "--out", str(f / "o8")]),
    ("generate", lambda r, f: ["generate", str(r), "--prompt", "a", "--device", "{d}"]),
    ("attention", lambda r, f: ["attention", str(r), "Ham.", "--png", str(f / "a.png"), "--device", "{d}"]),
    ("embed", lambda r, f: ["embed", "x", "--device", "{d}"]),
    ("bench", lambda r, f: ["bench", "attention", "--quick", "--device", "{d}"]),
    ("quickstart", lambda r, f: ["quickstart", "--out", str(f / "q"), "--device", "{d}"]),
]


@pytest.mark.parametrize(("verb", "make_args"), DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        pytest.param("cuda", "this machine has no CUDA device", marks=pytest.mark.skipif(
            __import__("torch").cuda.is_available(), reason="this machine has CUDA")),
        ("tpu", "'tpu' is not a device"),
    ],
)  # fmt: skip
def test_devices_that_cannot_be_used_are_refused_before_any_work(
    run_dir,  # noqa: F811
    files,
    capsys,
    verb,
    make_args,
    device,
    fragment,
):
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    args = [a.replace("{d}", device) for a in make_args(run_dir, files)]
    assert_one_clear_line(args, verb, fragment, capsys)
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before


@pytest.mark.parametrize(
    "args",
    [
        lambda r, f: ["generate", str(r), "--prompt", "a", "--dtype", "fp16", "--device", "cpu"],
        lambda r, f: ["train", str(f / "ok.toml"), "--set", "train.precision='fp16'", "--device", "cpu"],
    ],
    ids=["generate", "train"],
)
def test_fp16_on_the_cpu_is_refused(run_dir, files, capsys, args):  # noqa: F811
    verb = args(run_dir, files)[0]
    assert_one_clear_line(args(run_dir, files), verb, "fp16 is not supported on the CPU", capsys)


def test_bf16_where_the_cpu_would_emulate_it_is_refused(run_dir, capsys, monkeypatch):  # noqa: F811
    import qkv.devices

    monkeypatch.setattr(qkv.devices, "native_cpu_bf16", lambda: False)
    args = ["generate", str(run_dir), "--prompt", "a", "--dtype", "bf16", "--device", "cpu"]
    assert_one_clear_line(args, "generate", "dtype bf16 on this CPU would be emulated", capsys)
