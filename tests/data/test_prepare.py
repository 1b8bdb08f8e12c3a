"""``qkv prepare``: a corpus tokenized once into shards; checked against the tokenizers' own encodings of the text,
split where an independent reading of the text says, byte-identical when run again or resumed, and every bad input
refused in one line."""

from __future__ import annotations

import errno
import hashlib
import random
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import qkv.data.encoding as encoding
from qkv.cli import main
from qkv.data.prepare import PrepareSettings, prepare
from qkv.data.shards import PreparedCorpus, ShardWriter
from qkv.data.sources import document_starts
from qkv.data.text import CORPUS_PATH, LMData, PackedLMData, ShardDocuments
from qkv.errors import CheckpointError, ConfigError, DiskFullError
from qkv.tokenizers import BPETokenizer
from qkv.training.distributed import DistributedContext

TEXT = CORPUS_PATH.read_text(encoding="utf-8")
SMALL = PrepareSettings(shard_tokens=40_000)  # several shards of the bundled corpus


def _validation_start(text: str, fraction: float = 0.1) -> int:
    """Independently: the first blank-line run that ends after 90% of the (ASCII) text, and ends before its end."""
    cut = int(len(text.encode()) * (1 - fraction))
    return next(m.end() for m in re.finditer(r"\n(?:\r?\n)+", text) if m.end() > cut and m.end() < len(text))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _joined(corpus: PreparedCorpus, split: str) -> np.ndarray:
    return np.concatenate(corpus.tokens[split]).astype(np.int64)


def test_char_shards_hold_the_texts_ids_split_at_the_first_document_end_after_90_percent(tmp_path):
    corpus = prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    tok = corpus.tokenizer
    assert tok.vocab_size == len(set(TEXT)) + 1  # every character, plus <unk>
    cut = _validation_start(TEXT)
    assert _joined(corpus, "train").tolist() == tok.encode(TEXT[:cut])
    assert _joined(corpus, "val").tolist() == tok.encode(TEXT[cut:])
    assert len(corpus.tokens["train"]) > 1 and corpus.manifest["dtype"] == "uint16"
    # every shard starts a document; the documents are the pieces between blank lines
    starts = [m.end() for m in re.finditer(r"\n(?:\r?\n)+", TEXT[:cut]) if m.end() < cut]
    offset, found = 0, []
    for tokens, docs in zip(corpus.tokens["train"], corpus.documents["train"]):
        assert docs[0] == 0
        found += [offset + int(d) for d in docs[1:]]
        offset += len(tokens)
    assert found == [s for s in starts if s not in _shard_starts(corpus)]


def _shard_starts(corpus: PreparedCorpus) -> set[int]:
    return set(np.cumsum([len(t) for t in corpus.tokens["train"]])[:-1].tolist())


def test_document_starts_are_where_blank_line_runs_end_as_the_regular_expression_says():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("ab\n\n\ré") for _ in range(rng.randrange(0, 40)))
        reference = [0, *(m.end() for m in re.finditer(r"\n(?:\r?\n)+", text) if m.end() < len(text))]
        assert document_starts(text).tolist() == reference, repr(text)
    for text in ("x\n\ny\n\n\nz", "é\n\nü\n\n"):  # the array scans (no carriage return)
        reference = [0, *(m.end() for m in re.finditer(r"\n(?:\r?\n)+", text) if m.end() < len(text))]
        assert document_starts(text).tolist() == reference


def test_the_manifest_counts_and_checksums_are_the_files(tmp_path):
    corpus = prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    for split in ("train", "val"):
        for entry, tokens, docs in zip(corpus.manifest["splits"][split], corpus.tokens[split], corpus.documents[split]):
            data = (tmp_path / "d" / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert entry["tokens"] == len(tokens) == len(data) // 2 and entry["documents"] == len(docs)


def test_bpe_encodes_each_document_as_the_tokenizer_does_and_decodes_back(tmp_path):
    text = TEXT[:200_000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    corpus = prepare(tmp_path / "t.txt", tmp_path / "d", PrepareSettings(tokenizer="bpe:400"), progress=False)
    tok = corpus.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400
    ids = np.concatenate([_joined(corpus, "train"), _joined(corpus, "val")])
    assert tok.decode(ids.tolist()) == text
    bounds = [0, *(m.end() for m in re.finditer(r"\n(?:\r?\n)+", text) if m.end() < len(text)), len(text)]
    expected = [i for a, b in zip(bounds, bounds[1:]) for i in tok.tokenizer.encode(text[a:b]).ids]
    assert ids.tolist() == expected


@pytest.mark.parametrize("tokenizer", ["char", "bpe:300"])
def test_preparing_twice_writes_identical_files(tmp_path, tokenizer):
    (tmp_path / "t.txt").write_text(TEXT[:120_000], encoding="utf-8")
    settings = PrepareSettings(tokenizer=tokenizer, shard_tokens=20_000)
    prepare(tmp_path / "t.txt", tmp_path / "a", settings, progress=False)
    prepare(tmp_path / "t.txt", tmp_path / "b", settings, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    again = prepare(tmp_path / "t.txt", tmp_path / "a", settings, progress=False)  # already prepared: opened as is
    assert again.manifest == PreparedCorpus(tmp_path / "a").manifest


def test_bpe_in_worker_processes_writes_the_same_files_as_in_one(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text(TEXT[:150_000] + "\n\nnaïve café\n\n" + TEXT[150_000:200_000], encoding="utf-8")
    settings = PrepareSettings(tokenizer="bpe:400", shard_tokens=10_000)
    prepare(tmp_path / "t.txt", tmp_path / "one", settings, progress=False)
    monkeypatch.setattr(encoding, "PARALLEL_BYTES", 0)  # (any input is "large")
    monkeypatch.setattr(encoding.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert encoding.PieceEncoder(PreparedCorpus(tmp_path / "one").tokenizer, tmp_path / "one" / "tokenizer.json",
                                 1).workers == 2  # fmt: skip
    prepare(tmp_path / "t.txt", tmp_path / "two", settings, progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def _interrupt_after(monkeypatch, pieces: int, error: BaseException) -> None:
    """Make the shard writer fail on its ``pieces``-th piece."""
    calls = {"n": 0}
    add = ShardWriter.add

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == pieces:
            raise error
        return add(self, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "add", failing)


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")], ids=["ctrl-c", "disk-full"]
)
def test_an_interrupted_preparation_keeps_whole_shards_and_resumes_to_identical_files(tmp_path, monkeypatch, error):
    prepare(CORPUS_PATH, tmp_path / "straight", SMALL, progress=False)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 6, error)
        with pytest.raises(KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else DiskFullError) as caught:
            prepare(CORPUS_PATH, tmp_path / "resumed", SMALL, progress=False)
    assert "run the same command again to resume" in str(caught.value)
    left = _files(tmp_path / "resumed")
    assert not [name for name in left if name.endswith(".partial")]  # the shard being written was removed
    assert 1 <= len([name for name in left if name.endswith(".bin")]) < len(_files(tmp_path / "straight"))
    with pytest.raises(CheckpointError, match="only partly prepared"):
        PreparedCorpus(tmp_path / "resumed")
    prepare(CORPUS_PATH, tmp_path / "resumed", SMALL, progress=False)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "straight")


def test_a_directory_is_its_files_in_order_each_ending_a_document(tmp_path):
    source = tmp_path / "corpus"
    (source / "b").mkdir(parents=True)
    (source / "a.txt").write_text("alpha one\nalpha two", encoding="utf-8")  # no blank line: one document
    (source / "b" / "c.txt").write_text("gamma\n\ndelta " * 50, encoding="utf-8")
    (source / "empty.txt").write_text("", encoding="utf-8")
    (source / ".hidden").write_text("never read", encoding="utf-8")
    corpus = prepare(source, tmp_path / "d", PrepareSettings(val_fraction=0.2), progress=False)
    tok = corpus.tokenizer
    whole = tok.decode(np.concatenate([_joined(corpus, "train"), _joined(corpus, "val")]).tolist())
    assert whole == "alpha one\nalpha two" + "gamma\n\ndelta " * 50
    assert corpus.documents["train"][0][:2].tolist() == [0, len("alpha one\nalpha two")]  # a file ends a document
    assert [f["name"] for f in corpus.manifest["inputs"]["files"]] == ["a.txt", "b/c.txt"]


def test_text_without_blank_lines_is_split_at_a_line_end(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    corpus = prepare(tmp_path / "t.txt", tmp_path / "d", progress=False)
    val = corpus.tokenizer.decode(_joined(corpus, "val").tolist())
    assert text.endswith(val) and val.startswith("line ") and 0.09 < len(val) / len(text) < 0.11


def test_bytes_that_are_not_utf8_are_refused_with_their_count_and_first_offset_or_replaced(tmp_path):
    data = b"good text\n\n" * 10 + b"caf\xe9 \xff\xfe ok\n\nmore\n\n" * 2
    (tmp_path / "bad.txt").write_bytes(data)
    with pytest.raises(ConfigError, match=r"6 bytes of it are not UTF-8, the first at byte 113; .*--errors replace"):
        prepare(tmp_path / "bad.txt", tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()  # nothing left behind
    said: list[str] = []
    corpus = prepare(tmp_path / "bad.txt", tmp_path / "d", PrepareSettings(errors="replace"), say=said.append,
                     progress=False)  # fmt: skip
    assert said == ["warning: replaced 6 bytes that are not UTF-8 with U+FFFD (the first at bad.txt, byte 113)"]
    assert corpus.manifest["replaced_bytes"] == 6
    text = corpus.tokenizer.decode(np.concatenate([_joined(corpus, "train"), _joined(corpus, "val")]).tolist())
    assert text == data.decode("utf-8", errors="replace")  # (each bad byte here is its own U+FFFD in Python too)
    assert text.count("\ufffd") == 6


def test_a_vocabulary_too_large_for_uint16_is_refused_there_and_stored_as_uint32(tmp_path):
    chars = "".join(chr(0x10000 + i) for i in range(70_000))  # 70,000 distinct characters
    (tmp_path / "t.txt").write_text(chars + "\n\n" + chars[:1000], encoding="utf-8")
    with pytest.raises(ConfigError, match="does not fit uint16"):
        prepare(tmp_path / "t.txt", tmp_path / "a", PrepareSettings(dtype="uint16"), progress=False)
    corpus = prepare(tmp_path / "t.txt", tmp_path / "b", progress=False)
    assert corpus.manifest["dtype"] == "uint32" and corpus.tokens["train"][0].dtype == np.dtype("<u4")
    assert corpus.tokenizer.decode(_joined(corpus, "train").tolist()) == chars + "\n\n"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "holds .* bytes but the manifest says"),
        (lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]), "does not match the checksum"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["truncated", "changed", "missing"],
)
def test_shards_that_do_not_match_their_manifest_are_refused(tmp_path, damage, message):
    prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    damage(tmp_path / "d" / "train-00001.bin")
    with pytest.raises(CheckpointError, match=message):
        corpus = PreparedCorpus(tmp_path / "d")  # (sizes are checked here, checksums in the background ...)
        corpus.tokens["val"][0][:10]  # (... before any shard is read)


def test_a_directory_prepared_otherwise_is_never_overwritten(tmp_path):
    prepare(CORPUS_PATH, tmp_path / "d", progress=False)
    before = _files(tmp_path / "d")
    with pytest.raises(ConfigError, match="other settings .*val_fraction"):
        prepare(CORPUS_PATH, tmp_path / "d", PrepareSettings(val_fraction=0.2), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="holds no qkv data manifest"):
        prepare(CORPUS_PATH, tmp_path / "other", progress=False)
    assert _files(tmp_path / "d") == before and (tmp_path / "other" / "mine.txt").exists()


def test_sampled_batches_are_the_in_memory_samplers_on_one_shard_and_windows_of_one_shard_otherwise(tmp_path):
    one = prepare(CORPUS_PATH, tmp_path / "one", progress=False)
    cut = _validation_start(TEXT)
    ids = torch.tensor(one.tokenizer.encode(TEXT), dtype=torch.long)
    reference = LMData([ids[:cut]], [ids[cut:]], context=64)  # the classic sampler over tensors in memory
    shards = LMData(one.tokens["train"], one.tokens["val"], context=64)
    for split, step in (("train", 0), ("train", 7), ("val", 3)):
        expected, got = reference.batch(split, 12, 1, step), shards.batch(split, 12, 1, step)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    many = prepare(CORPUS_PATH, tmp_path / "many", SMALL, progress=False)
    data = LMData(many.tokens["train"], many.tokens["train"], context=64)
    x, y = data.batch("train", 256, seed=0, step=0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    text, ends = bytes(ids[:cut].tolist()), _shard_starts(many)  # (char ids < 256: one byte each)
    for row_x, row_y in zip(x, y):  # each row is a window of the text, never one across a shard's end
        window = bytes(torch.cat([row_x, row_y[-1:]]).tolist())
        start = text.find(window)
        assert start >= 0 and not any(start < end < start + 65 for end in ends)


def test_each_process_under_torchrun_reads_its_own_rows_of_the_global_batch(tmp_path):
    corpus = prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    data = LMData(corpus.tokens["train"], corpus.tokens["val"], context=32)
    whole = data.batch("train", 8, seed=5, step=9)
    parts = [data.batch("train", 8, 5, 9, DistributedContext(rank, 2).rows(8)) for rank in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])  # together: the one-process batch
    assert not {tuple(r) for r in parts[0][0].tolist()} & {tuple(r) for r in parts[1][0].tolist()}


def test_packing_from_shards_draws_the_same_documents_as_from_a_list(tmp_path):
    corpus = prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    cut = _validation_start(TEXT)
    bounds = [0, *(m.end() for m in re.finditer(r"\n(?:\r?\n)+", TEXT[:cut]) if m.end() < cut)]
    bounds = sorted(set(bounds) | _shard_starts(corpus)) + [cut]
    listed = [torch.tensor(corpus.tokenizer.encode(TEXT[a:b])) for a, b in zip(bounds, bounds[1:])]
    listed = [d for d in listed if len(d) >= 2]
    docs = ShardDocuments(corpus.tokens["train"], corpus.documents["train"])
    assert len(docs) == len(listed) and all(torch.equal(docs[i], listed[i]) for i in (0, 1, len(listed) - 1))
    packed, reference = PackedLMData(docs, docs, 48), PackedLMData(listed, listed, 48)
    assert all(torch.equal(a, b) for a, b in zip(packed.batch("train", 6, 0, 4), reference.batch("train", 6, 0, 4)))


def test_the_cli_prepares_and_its_hint_trains_on_the_result(tmp_path, capsys, monkeypatch):
    out = tmp_path / "my data"  # (a space: the hint quotes it)
    assert main(["prepare", str(CORPUS_PATH), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"train: {sum(len(t) for t in PreparedCorpus(out).tokens['train']):,} tokens" in printed
    hint = next(line for line in printed.splitlines() if line.startswith("train on it: "))
    words = shlex.split(hint.removeprefix("train on it: "))
    assert words[:2] == ["qkv", "train"]
    monkeypatch.chdir(tmp_path)
    run = ["--out", str(tmp_path / "run"), "--set", "train.steps=2", "--set", "train.eval_iters=1", "--no-progress"]
    assert main([*words[1:], *run]) == 0
    assert not (tmp_path / "run" / "data").exists()  # a prepared directory is read where it is


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokenizer", "bpe:12"], "a BPE vocabulary must be a whole number from 257"),
        (["--tokenizer", "nope"], "unknown tokenizer 'nope'"),
        (["--val-fraction", "1"], r"validation fraction must be in \(0, 1\)"),
        (["--val-fraction", "nan"], r"validation fraction must be in \(0, 1\)"),
        (["--shard-tokens", "0"], "--shard-tokens must be a positive number of tokens, got 0"),
        (["--sample-mb", "inf"], "--sample-mb must be a positive number"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    assert main(["prepare", str(CORPUS_PATH), "--out", str(tmp_path / "d"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("what", ["missing", "empty", "empty-dir", "device"])
def test_missing_or_empty_input_is_one_clear_line(tmp_path, capsys, what):
    path = Path("/dev/null") if what == "device" else tmp_path / "in"
    if what == "empty":
        path.write_text("")
    elif what == "empty-dir":
        path.mkdir()
    assert main(["prepare", str(path), "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    expected = {"missing": "does not exist", "empty": "is empty", "empty-dir": "no files in it",
                "device": "is neither a regular file nor a directory"}  # fmt: skip
    assert expected[what] in err


def test_ctrl_c_in_the_cli_says_what_was_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    _interrupt_after(monkeypatch, 4, KeyboardInterrupt())
    args = ["prepare", str(CORPUS_PATH), "--out", str(tmp_path / "d"), "--shard-tokens", "40000", "--no-progress"]
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search("finished shards? kept in .* again to resume", err)
    monkeypatch.undo()
    assert main(args) == 0
    assert PreparedCorpus(tmp_path / "d").count("train") == _validation_start(TEXT)


def test_training_on_a_changed_shard_stops_before_its_first_step_in_one_line(tmp_path, capsys):
    prepare(CORPUS_PATH, tmp_path / "d", SMALL, progress=False)
    shard = tmp_path / "d" / "train-00003.bin"
    data = shard.read_bytes()
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # one id changed, the size the same
    run = tmp_path / "run"
    args = ["train", "gpt-baby", "--set", f"data.path={tmp_path / 'd'}", "--out", str(run), "--no-progress"]
    assert main([*args, "--set", "train.steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-00003.bin does not match the checksum" in err
    assert not run.exists()  # no step was taken, nothing was left behind


@pytest.mark.parametrize("where", ["a-file", "/proc/qkv-data"])
def test_an_out_that_cannot_be_a_directory_is_refused_before_any_work(tmp_path, capsys, where):
    (tmp_path / "a-file").write_text("mine")
    out = tmp_path / where if where == "a-file" else Path(where)
    assert main(["prepare", str(CORPUS_PATH), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {out}" in err
    assert (tmp_path / "a-file").read_text() == "mine"
