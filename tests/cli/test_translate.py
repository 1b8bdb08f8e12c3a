"""qkv train on a seq2seq config, then qkv translate: output lines, beam search, alignment PNG, explorer page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qkv.cli import main
from tests.conftest import page_data, stored_weights

ROOT = Path(__file__).parent.parent.parent
TINY = [
    "train.precision='fp32'",  # runs are compared number for number: no measured choice of precision
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


def train(out: Path, *overrides: str, family: str = "rnn") -> Path:
    tiny = TINY if family == "rnn" else [*TINY[:-2], "model.embed_dim=16", "model.ffn_dim=32", "model.num_heads=2"]
    sets = [arg for item in (*tiny, *overrides) for arg in ("--set", item)]
    config = ROOT / "configs" / f"dates-{family}.toml"
    assert main(["train", str(config), "--out", str(out), "--no-progress", *sets]) == 0
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


def test_translate_scores_are_the_models_log_probabilities(seq2seq_dir, capsys):
    import torch

    from qkv.data.pairs import pad_rows
    from qkv.decoding import score_translation, translate
    from qkv.runs import load_seq2seq

    texts = ["March 5, 2021", "February 30, 2021"]
    capsys.readouterr()
    assert main(["translate", str(seq2seq_dir), *texts, "--scores"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    model, tokenizer, _ = load_seq2seq(seq2seq_dir)
    src = pad_rows([tokenizer.encode_source(t) for t in texts])
    out = translate(model, src)
    means = score_translation(model, src, out).mean
    for (text, shown), row, mean in zip(lines, out.tolist(), means):
        assert text == tokenizer.decode_target(row)
        assert float(shown) == pytest.approx(float(mean), rel=1e-3)  # printed to 4 significant digits
        assert float(shown) < 0
    assert torch.isfinite(means).all()


def test_translate_with_controls_prints_what_the_api_returns(seq2seq_dir, capsys):
    from qkv.data.pairs import pad_rows
    from qkv.decoding import translate
    from qkv.runs import load_seq2seq

    capsys.readouterr()
    flags = ["--no-repeat-ngram-size", "2", "--min-new-tokens", "3", "--repetition-penalty", "1.2"]
    assert main(["translate", str(seq2seq_dir), "March 5, 2021", *flags]) == 0
    model, tokenizer, _ = load_seq2seq(seq2seq_dir)
    src = pad_rows([tokenizer.encode_source("March 5, 2021")])
    out = translate(model, src, no_repeat_ngram_size=2, min_new_tokens=3, repetition_penalty=1.2)
    assert capsys.readouterr().out.strip() == tokenizer.decode_target(out[0].tolist())
    assert main(["translate", str(seq2seq_dir), "March 5, 2021", "--no-repeat-ngram-size", "-1"]) == 2
    assert "--no-repeat-ngram-size must be an int >= 0" in capsys.readouterr().err


def test_translate_reads_a_file_and_beam_search(seq2seq_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("March 5, 2021\n\n5 Mar 21\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["translate", str(seq2seq_dir), "--file", str(tmp_path / "in.txt"), "--strategy", "beam"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # blank lines are skipped


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("transformer"), family="transformer")


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_translate_writes_the_explorer_page(model, seq2seq_dir, transformer_dir, tmp_path, capsys):
    run = {"rnn": seq2seq_dir, "transformer": transformer_dir}[model]
    capsys.readouterr()
    assert main(["translate", str(run), "5 Mar 21", "--html", str(tmp_path / "page.html")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"explorer:  {tmp_path / 'page.html'} (open it in a browser; it works offline)"
    page = page_data(tmp_path / "page.html")
    kinds = [k["name"] for k in page["kinds"]]
    assert kinds == (["cross-attention"] if model == "rnn" else ["encoder self-attention", "decoder self-attention",
                                                                 "cross-attention"])  # fmt: skip
    data = page["kinds"][-1]
    layers, heads = (1, 1) if model == "rnn" else (2, 2)
    assert (data["layers"], data["heads"], data["cross"], data["queryOffset"]) == (layers, heads, True, 0)
    assert page["focus"] == [len(kinds) - 1, layers - 1, 0]
    assert data["tokens"] == [*"5 Mar 21", "</s>"]
    # the query tokens are the printed output, up to and with </s> (which decoding shows <unk> as \ufffd)
    shown = {"<pad>": "", "<s>": "", "</s>": "", "<unk>": "\ufffd"}
    assert "".join(shown.get(t, t) for t in data["queryTokens"]) == out[0]
    assert data["queryTokens"] == page["alignment"]["target"]
    # the alignment view is the mean over heads of the last layer drawn in the head and model views
    weights = stored_weights(data)  # (layers, heads, target, source), float32 as stored
    aligned = torch.tensor(page["alignment"]["weights"], dtype=torch.float32)
    torch.testing.assert_close(weights[-1].mean(0), aligned, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(aligned.sum(-1), torch.ones(len(aligned)), rtol=1e-5, atol=1e-6)
    if model == "transformer":  # the decoder's self-attention is causal over the target, the encoder's is not
        decoder = stored_weights(page["kinds"][1])
        assert bool((decoder.triu(1) == 0).all()) and page["kinds"][1]["tokens"] == data["queryTokens"]
        assert page["kinds"][0]["tokens"] == data["tokens"] and bool((stored_weights(page["kinds"][0]) > 0).all())


def test_translate_numbers_one_page_per_text(seq2seq_dir, tmp_path, capsys):
    assert main(["translate", str(seq2seq_dir), "5 Mar 21", "March 5, 2021", "--html", str(tmp_path / "p.html")]) == 0
    assert [page_data(tmp_path / f"p-{i}.html")["kinds"][0]["tokens"][0] for i in (1, 2)] == ["5", "M"]


def test_one_bad_text_is_reported_and_the_others_translated(seq2seq_dir, capsys):
    capsys.readouterr()
    alone = main(["translate", str(seq2seq_dir), "5 Mar 21", "March 5, 2021"])
    assert alone == 0
    good = capsys.readouterr().out.splitlines()
    assert main(["translate", str(seq2seq_dir), "5 Mar 21", "March → 5", "March 5, 2021"]) == 2
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [good[0], "", good[1]]  # line N answers text N; the skipped one is empty
    err = printed.err.strip().splitlines()
    assert len(err) == 1 and "'March → 5' has pieces the model never saw" in err[0] and "skipped" in err[0]


def test_texts_after_options_are_texts_and_min_new_tokens_is_capped_with_a_warning(seq2seq_dir, capsys):
    from qkv.decoding import translate
    from qkv.runs import load_seq2seq

    capsys.readouterr()
    assert main(["translate", str(seq2seq_dir), "--min-new-tokens", "1", "5 Mar 21", "March 5, 2021"]) == 0
    after = capsys.readouterr().out
    assert main(["translate", str(seq2seq_dir), "5 Mar 21", "March 5, 2021", "--min-new-tokens", "1"]) == 0
    assert capsys.readouterr().out == after and len(after.splitlines()) == 2
    model, tokenizer, _ = load_seq2seq(seq2seq_dir)
    limit = model.config.max_target_len
    assert main(["translate", str(seq2seq_dir), "5 Mar 21", "--min-new-tokens", str(limit + 1000)]) == 0
    printed = capsys.readouterr()
    assert f"--min-new-tokens {limit + 1000} is more than the {limit} tokens an output may have here" in printed.err
    want = translate(model, torch.tensor([tokenizer.encode_source("5 Mar 21")]), min_new_tokens=limit)
    assert printed.out.rstrip("\n") == tokenizer.decode_target(want[0].tolist())


def test_reported_scores_are_rounded_and_a_perfect_match_is_exactly_100():
    from qkv.training.seq2seq_eval import score_translations

    scores = score_translations(["2021-03-05", "2021-03-06"], ["2021-03-05", "2021-03-06"], ["a", "b"])
    assert scores["exact_match"] == scores["bleu"] == 100.0
    mixed = score_translations(["2021-03-05", "x"], ["2021-03-05", "2021-03-06"], ["a", "b"], "char")
    assert all(round(mixed[k], 4) == mixed[k] for k in ("exact_match", "bleu", "chrf"))


def test_translate_in_int8_loads_int8_layers(transformer_dir, capsys):
    """--dtype int8 reaches the sequence-to-sequence loader: the model it translates with holds int8 linear layers
    where their input width suits the kernel (the 32-wide feed-forward output here), and it prints a translation."""
    from qkv.attention.int8 import Int8Linear
    from qkv.runs import load_seq2seq

    capsys.readouterr()
    assert main(["translate", str(transformer_dir), "5 Mar 21", "--dtype", "int8", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    model, _, _ = load_seq2seq(transformer_dir, "cpu", "int8")
    assert any(isinstance(m, Int8Linear) for m in model.modules())
