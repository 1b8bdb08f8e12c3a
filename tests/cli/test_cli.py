"""The CLI: a short end-to-end run, and bad input answered with one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.training import load_checkpoint_info

TINY = [
    "train.precision='fp32'",  # runs are compared number for number: no measured choice of precision
    "model.num_layers=1",
    "model.num_heads=2",
    "model.embed_dim=16",
    "model.max_seq_len=16",
    "train.steps=3",
    "train.batch_size=2",
    "train.eval_iters=1",
    "train.eval_interval=3",
]


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = out / "c.toml"
    config.write_text("[train]\nseed = 3\n")
    assert main(["train", str(config), "--out", str(out), "--no-progress", *sets(TINY)]) == 0
    return out


def test_train_then_generate(run_dir, capsys):
    assert (run_dir / "metrics.json").exists() and (run_dir / "checkpoints" / "latest").exists()
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "5", "--strategy", "greedy"]) == 0
    assert capsys.readouterr().out.startswith("Ham.")


def test_generate_with_decoding_controls_prints_what_the_api_returns(run_dir, capsys):
    import torch

    import qkv
    from qkv.runs import load_causal_lm

    flags = ["--repetition-penalty", "1.5", "--no-repeat-ngram-size", "3", "--frequency-penalty", "0.2"]
    capsys.readouterr()
    argv = ["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "12", "--strategy", "greedy"]
    assert main([*argv, *flags]) == 0
    model, tokenizer, _ = load_causal_lm(run_dir)
    prompt = torch.tensor([tokenizer.encode("Ham.")])
    expected = qkv.generate(
        model, prompt, max_new_tokens=12, repetition_penalty=1.5, no_repeat_ngram_size=3, frequency_penalty=0.2
    )
    assert capsys.readouterr().out.rstrip("\n") == tokenizer.decode(expected[0].tolist())
    assert main([*argv, *flags, "--scores", "--no-stream"]) == 0
    captured = capsys.readouterr()
    expected_score = qkv.score_continuation(model, expected, prompt.shape[1]).describe()
    assert captured.out.rstrip("\n") == tokenizer.decode(expected[0].tolist())
    assert captured.err.strip() == f"qkv generate: {expected_score}"
    assert main([*argv, *flags, "--scores"]) == 0  # streamed: the same score at the end
    assert capsys.readouterr().err.strip() == f"qkv generate: {expected_score}"
    assert main(["generate", str(run_dir), "--prompt", "Ham.", "--repetition-penalty", "-1"]) == 2
    assert "--repetition-penalty must be a finite number > 0" in capsys.readouterr().err


def test_generate_prints_the_n_best_with_their_scores(run_dir, capsys):
    import torch

    import qkv
    from qkv.runs import load_causal_lm

    argv = ["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "6", "--strategy", "beam"]
    capsys.readouterr()
    assert main([*argv, "--num-beams", "3", "--num-return-sequences", "3", "--scores"]) == 0
    captured = capsys.readouterr()
    model, tokenizer, _ = load_causal_lm(run_dir)
    prompt = torch.tensor([tokenizer.encode("Ham.")])
    out = qkv.generate(model, prompt, max_new_tokens=6, strategy="beam", num_beams=3, num_return_sequences=3)
    expected = []
    for row in range(3):
        expected += [f"---- {row + 1} of 3 ----", tokenizer.decode(out[row].tolist())]
    assert captured.out == "".join(line + "\n" for line in expected)  # (a text may itself hold newlines)
    scores = [qkv.score_continuation(model, out[r : r + 1], prompt.shape[1]).describe() for r in range(3)]
    assert captured.err.strip().split("\n") == [f"qkv generate: {s}" for s in scores]


def test_generate_continues_every_line_of_a_file_in_one_batch(run_dir, tmp_path, capsys):
    import qkv
    from qkv.runs import load_causal_lm

    lines = ["Ham.", "", "KING", "O"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    argv = ["generate", str(run_dir), "--file", str(tmp_path / "prompts.txt"), "--max-new-tokens", "7"]
    assert main([*argv, "--strategy", "greedy"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer, _ = load_causal_lm(run_dir)
    expected = ""
    for index, text in enumerate(t for t in lines if t):
        alone = qkv.generate(model, torch.tensor([tokenizer.encode(text)]), max_new_tokens=7)[0]
        expected += f"---- {index + 1} of 3 ----\n{tokenizer.decode(alone.tolist())}\n"
    assert printed == expected
    assert main(["generate", str(run_dir), "--file", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_stops_at_a_stop_string(run_dir, capsys):
    argv = ["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "40", "--strategy", "greedy"]
    capsys.readouterr()
    assert main(argv) == 0
    full = capsys.readouterr().out.rstrip("\n")
    stop = full[len("Ham.") + 10 : len("Ham.") + 12]  # two characters of the continuation
    for mode in ([], ["--no-stream"]):
        assert main([*argv, "--stop", stop, *mode]) == 0
        cut = capsys.readouterr().out.rstrip("\n")
        assert full.startswith(cut) and cut.endswith(stop) and stop not in cut[len("Ham.") : -1]
    assert main([*argv, "--stop", ""]) == 2
    assert "stop strings must be non-empty" in capsys.readouterr().err


def test_long_prompt_is_cut_from_the_left_with_a_warning(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "a" * 40, "--max-new-tokens", "2"]) == 0
    assert "keeping the last 16" in capsys.readouterr().err


def _corrupt(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir, copy)
    latest = copy / "checkpoints" / (copy / "checkpoints" / "latest").read_text().strip()
    (latest / "model.safetensors").write_bytes(b"\x00" * 10)
    return copy


@pytest.mark.parametrize(
    ("make_args", "fragment"),
    [
        (lambda d, t: ["generate", str(t / "nope"), "--prompt", "x"], "does not exist"),
        (lambda d, t: ["generate", str(_corrupt(d, t)), "--prompt", "x"], "model.safetensors is corrupt"),
        (lambda d, t: ["generate", str(d), "--prompt", ""], "prompt is empty"),
        (lambda d, t: ["generate", str(d), "--prompt", "안녕"], "never saw in training"),
        (lambda d, t: ["generate", str(d / "metrics.json"), "--prompt", "x"], "is a file"),
        (lambda d, t: ["train", str(d / "c.toml"), "--set", "train.stepz=3", "--out", str(t / "o")], "did you mean"),
        (lambda d, t: ["train", str(d / "c.toml"), "--set", "train.steps=x", "--out", str(t / "o")], "an integer"),
        (lambda d, t: ["train", str(t / "missing.toml")], "does not exist"),
        (lambda d, t: ["train", str(d / "c.toml"), "--out", str(d)], "already holds a run"),
        (lambda d, t: ["train", str(d / "c.toml"), "--resume", "--out", str(t / "empty")], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(run_dir, tmp_path, capsys, make_args, fragment):
    capsys.readouterr()
    assert main(make_args(run_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


def test_no_traceback_from_the_real_executable(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qkv.cli", "generate", str(tmp_path), "--prompt", "x"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "holds no qkv checkpoint" in proc.stderr


def test_help_explains_every_option(capsys):
    for verb in ("train", "generate", "quickstart", "bench"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert "usage: qkv " + verb in text


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--steps", "3", "--max-new-tokens", "20", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "---- sample ----" in printed and str(out / "attention.png") in printed
    assert (out / "attention.png").stat().st_size > 10_000 and (out / "sample.txt").read_text().startswith("Ham.")


def test_quickstart_resumes_an_interrupted_run(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--max-new-tokens", "5", "--no-progress"]
    assert main([*args, "--steps", "3"]) == 0
    (out / "metrics.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    assert main([*args, "--steps", "5"]) == 0
    assert f"resuming the interrupted run in {out} from step 3" in capsys.readouterr().out
    assert load_checkpoint_info(out).step == 5
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_attention_verb_writes_png_and_page(run_dir, tmp_path, capsys):
    png, page = tmp_path / "a.png", tmp_path / "a.html"
    assert main(["attention", str(run_dir), "Ham. To be", "--png", str(png), "--html", str(page)]) == 0
    assert png.stat().st_size > 5_000 and "qkvDraws" in page.read_text()
    assert (
        main(["attention", str(run_dir), "Ham.", "--png", str(tmp_path / "b.svg"), "--layer", "0", "--head", "1"]) == 0
    )
    assert (tmp_path / "b.svg").read_text().startswith("<?xml")
    capsys.readouterr()
    assert main(["attention", str(run_dir), "Ham."]) == 2
    assert "--png FILE and/or --html FILE" in capsys.readouterr().err
    assert main(["attention", str(run_dir), "Ham.", "--png", str(png), "--layer", "7"]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["attention", str(run_dir), "Ham.", "--html", str(page), "--layer", "7"]) == 2
    assert "layer 7 does not exist: self-attention has" in capsys.readouterr().err
    assert main(["attention", str(run_dir), "Ham.", "--html", str(page), "--layer", "-1"]) == 2
    assert "--layer counts from 0 (the first), got -1" in capsys.readouterr().err


def test_ctrl_c_keeps_what_was_generated_and_exits_130(run_dir):
    """SIGINT while streaming: the text so far stays printed, one line on stderr says so, exit code 130."""
    import signal
    import time

    from tests.conftest import interruptible

    proc = interruptible(
        [sys.executable, "-m", "qkv.cli", "generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 60
    while len(seen) < 200 and time.monotonic() < deadline:  # wait until it is streaming
        seen += proc.stdout.read() or b""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    text = (seen + out).decode("utf-8", errors="replace")
    assert proc.returncode == 130, err
    new_tokens = int(re.search(rb"interrupted \(Ctrl-C\); (\d+) new tokens were generated", err).group(1))
    assert text.startswith("Ham.") and new_tokens >= 50 and len(text) >= 4 + new_tokens - 1  # char-level: 1 per token
    assert b"Traceback" not in err


def test_attention_title_names_the_tokens_drawn_when_a_long_text_is_cut(run_dir, tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr("qkv.visualization.plot_attention", lambda *a, **k: titles.append(k["title"]) or a[2])
    text = "START" + "ab" * 20 + "THE END"  # 52 characters; the model's context is 16
    assert main(["attention", str(run_dir), text, "--png", str(tmp_path / "a.png")]) == 0
    assert titles == [f"{run_dir.name}: {text[-16:]!r} (its last 16 tokens)"]


def test_streamed_text_equals_the_text_printed_whole(run_dir, capsys):
    args = ["generate", str(run_dir), "--prompt", "Ham.\n", "--max-new-tokens", "60", "--seed", "4"]
    capsys.readouterr()
    assert main(args) == 0
    streamed = capsys.readouterr().out
    assert main([*args, "--no-stream"]) == 0
    assert streamed == capsys.readouterr().out


@pytest.mark.parametrize("metric", ["ablation", "attribution", "logit-attribution", "induction", "previous-token"])
def test_heads_prints_the_scores_the_api_computes_and_draws_them(run_dir, tmp_path, capsys, metric):
    from qkv.cli.common import encode_prompt
    from qkv.cli.heads import head_scores
    from qkv.runs import load_causal_lm

    png = tmp_path / "heads.png"
    capsys.readouterr()
    assert main(["heads", str(run_dir), "To be, or not", "--metric", metric, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    model, tokenizer, _ = load_causal_lm(run_dir)
    want = head_scores(model, encode_prompt(tokenizer, "To be, or not", model.config.max_seq_len), metric)
    rows = [line.split()[1:] for line in out.splitlines()[2:] if line.split() and line.split()[0].isdigit()]
    assert [float(v) for row in rows for v in row] == pytest.approx(want.flatten().tolist(), abs=1e-4)
    assert len(rows) == want.shape[0]
    assert png.stat().st_size > 0 and f"written: {png}" in out


def test_heads_html_writes_the_explorer_with_the_printed_scores_rollout_and_flow(run_dir, tmp_path, capsys):
    from tests.conftest import page_data

    page = tmp_path / "heads.html"
    capsys.readouterr()
    assert main(["heads", str(run_dir), "To be, or not", "--metric", "previous-token", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    rows = [[float(v) for v in line.split()[1:]] for line in out.splitlines()[2:] if line.split()[0].isdigit()]
    data = page_data(page)["kinds"][0]
    assert data["headScores"]["name"] == "previous-token"
    assert sum(data["headScores"]["values"], []) == pytest.approx(sum(rows, []), abs=1e-4)
    assert data["tokens"] == list("To be, or not")
    assert len(data["rollout"]) == data["layers"] and data["flow"] is not None  # 13 tokens: flow too
    assert f"written: {page}" in out
    assert main(["heads", "minilm", "I go to school", "--metric", "previous-token", "--html", str(page)]) == 0
    data = page_data(page)["kinds"][0]
    assert data["headScores"]["values"] and data["rollout"] is not None


def test_heads_refuses_ablation_without_a_language_model_and_empty_text(run_dir, capsys):
    assert main(["heads", "minilm", "a sentence"]) == 2
    assert "needs a causal language model" in capsys.readouterr().err
    assert main(["heads", "minilm", "a sentence", "--metric", "logit-attribution"]) == 2
    assert "needs a causal language model" in capsys.readouterr().err
    assert main(["heads", str(run_dir), ""]) == 2
    assert "TEXT is empty" in capsys.readouterr().err


def test_generate_never_samples_unk_and_prints_what_the_api_gives_with_it_suppressed(run_dir, capsys):
    """The tiny model gives <unk> (id 0, no text: it would print U+FFFD) some probability; the CLI suppresses it."""
    import qkv
    from qkv.runs import load_causal_lm

    model, tokenizer, _ = load_causal_lm(run_dir)
    prompt = torch.tensor([tokenizer.encode("Ham.")])
    free = qkv.generate(model, prompt, max_new_tokens=400, strategy="sample", seed=5, temperature=1.5)
    assert 0 in free[0].tolist(), "the test needs a model that would sample <unk>"
    capsys.readouterr()
    args = ["generate", str(run_dir), "--prompt", "Ham.", "--max-new-tokens", "400", "--seed", "5"]
    assert main([*args, "--temperature", "1.5", "--no-stream"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    want = qkv.generate(
        model, prompt, max_new_tokens=400, strategy="sample", seed=5, temperature=1.5, suppress_tokens=[0]
    )
    assert printed == tokenizer.decode(want[0].tolist()) and "\ufffd" not in printed


def test_embed_warns_when_a_text_is_cut_and_refuses_an_empty_one(capsys):
    long_text = " ".join(["word"] * 2000)
    capsys.readouterr()
    assert main(["embed", "short", long_text]) == 0
    err = capsys.readouterr().err
    assert "warning: text 2 is longer than the model's 256 tokens; only the first 256 tokens are embedded" in err
    assert main(["embed", "  "]) == 2 and "a text is empty" in capsys.readouterr().err


def test_embed_in_int8_calibrates_on_the_file_given_and_prints_what_the_api_gives(tmp_path, capsys):
    """--dtype int8 --calibration FILE: the vectors qkv.embed gives with those texts as calibration; the CLI says
    what it rounds on; a calibration without int8, a missing or an empty file are named."""
    import json

    import qkv

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("Attention weights sum to one.\n\nEach head has its own projections.\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["embed", "a query about heads", "--dtype", "int8", "--calibration", str(calibration)]) == 0
    out, err = capsys.readouterr()
    assert f"int8: rounding the weights by GPTQ on 2 lines of {calibration} first" in err
    printed = torch.tensor(json.loads(out)["embedding"])
    texts = ["Attention weights sum to one.", "Each head has its own projections."]
    expected = qkv.embed(["a query about heads"], dtype="int8", calibration=texts)[0]
    torch.testing.assert_close(printed, expected, rtol=0, atol=1e-7)  # (printed rounded to 7 decimals)
    assert main(["embed", "x", "--calibration", str(calibration)]) == 2
    assert "--calibration rounds int8 weights; add --dtype int8" in capsys.readouterr().err
    assert main(["embed", "x", "--dtype", "int8", "--calibration", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    assert main(["embed", "x", "--dtype", "int8", "--calibration", str(tmp_path / "blank.txt")]) == 2
    assert "blank.txt is empty" in capsys.readouterr().err


def test_help_names_every_trainable_family_and_every_pretrained_format(capsys):
    from qkv.models.families import families

    for verb in ("train", "attention"):
        with pytest.raises(SystemExit) as done:
            main([verb, "--help"])
        assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(f.name in text for f in families() if f.trainable)
    assert "BERT, GPT-2, Llama, Mistral or Qwen2" in text


def test_generate_in_int8_is_the_int8_models_greedy_text(tmp_path, capsys):
    """--dtype int8 loads the run with weight-only int8 linear layers (a 32-wide model: the kernel's width) and
    prints exactly what the same int8 model generates through the API."""
    import qkv
    from qkv.attention.int8 import Int8Linear
    from qkv.runs import load_causal_lm

    (tmp_path / "c.toml").write_text("[train]\nseed = 3\n")
    wide = [item.replace("embed_dim=16", "embed_dim=32") for item in TINY]
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path), "--no-progress", *sets(wide)]) == 0
    capsys.readouterr()
    flags = ["--prompt", "Ham.", "--max-new-tokens", "6", "--strategy", "greedy", "--device", "cpu"]
    assert main(["generate", str(tmp_path), *flags, "--dtype", "int8"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tokenizer, _ = load_causal_lm(tmp_path, "cpu", "int8")
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    ids = torch.tensor([tokenizer.encode("Ham.")])
    assert printed == tokenizer.decode(qkv.generate(model, ids, max_new_tokens=6)[0].tolist()).strip()
