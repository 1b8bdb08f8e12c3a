"""Seq2seq runs: kind-aware configs, batches, a loss that ignores padding, the Trainer end to end with its
exact match / BLEU / chrF report, bit-identical resume, TSV data, and scores checked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qkv.data.pairs import PairData, load_pair_splits
from qkv.errors import ConfigError
from qkv.tokenizers.pair import PairTokenizer
from qkv.training import Trainer, load_checkpoint_info, load_run_config
from qkv.training.runs import build_run
from qkv.training.seq2seq_eval import score_translations

ROOT = Path(__file__).parent.parent.parent
TINY = [
    "train.precision='fp32'",  # runs are compared number for number: no measured choice of precision
    "data.train_size=300",
    "data.eval_size=12",
    "train.steps=8",
    "train.batch_size=8",
    "train.eval_interval=4",
    "train.eval_iters=2",
    "train.checkpoint_interval=4",
    "train.warmup_steps=2",
]
RNN_TINY = ["model.embed_dim=16", "model.hidden_dim=32", "model.dropout=0.1"]  # dropout: RNG state across resume
TRANSFORMER_TINY = ["model.embed_dim=32", "model.ffn_dim=64", "model.encoder_layers=1", "model.decoder_layers=1"]


def make_trainer(out: Path, config_name: str, overrides=()) -> Trainer:
    tiny = RNN_TINY if "rnn" in config_name else TRANSFORMER_TINY
    config = load_run_config(ROOT / "configs" / config_name, TINY + tiny + list(overrides))
    model, task, tok = build_run(config)
    return Trainer(model, task, config.train, out, tok, config.to_dict(), progress=False)


def test_configs_pick_the_model_and_data_types_by_kind():
    config = load_run_config(ROOT / "configs" / "dates-rnn.toml")
    assert config.kind == "rnn-seq2seq" and config.model.attention == "luong" and config.data.task == "dates"
    assert load_run_config(ROOT / "configs" / "numbers-ko-transformer.toml").model.norm_placement == "post"
    with pytest.raises(ConfigError, match="unknown config key 'model.num_heads'"):
        load_run_config(ROOT / "configs" / "dates-rnn.toml", ["model.num_heads=2"])


def test_unknown_kind_is_named(tmp_path):
    (tmp_path / "c.toml").write_text('kind = "rnn_seq2seq"\n')
    with pytest.raises(ConfigError, match="unknown kind 'rnn_seq2seq' \\(did you mean 'rnn-seq2seq'\\?\\)"):
        load_run_config(tmp_path / "c.toml")


def test_batches_are_reproducible_shifted_and_sliceable():
    splits = load_pair_splits("dates", train_size=200, eval_size=10)
    data = PairData(splits, PairTokenizer.train(splits["train"]))
    src, tgt_in, tgt_out = data.batch("train", 8, seed=1, step=3)
    again = data.batch("train", 8, seed=1, step=3)
    assert all(torch.equal(a, b) for a, b in zip((src, tgt_in, tgt_out), again))
    assert not torch.equal(src, data.batch("train", 8, seed=1, step=4)[0])
    assert torch.equal(tgt_in[:, 1:], torch.where(tgt_out[:, :-1] == 2, tgt_in[:, 1:], tgt_out[:, :-1]))
    assert torch.all(tgt_in[:, 0] == 1)
    half = data.batch("train", 8, seed=1, step=3, rows=slice(4, 8))
    assert torch.equal(half[0], src[4:8, : half[0].shape[1]])
    assert data.batch("val", 4, 0, 0)[0].shape[0] == 4  # the Trainer's "val" is the valid split


@pytest.mark.parametrize("config_name", ["dates-rnn.toml", "numbers-en-transformer.toml"])
def test_the_loss_ignores_padding(tmp_path, config_name):
    trainer = make_trainer(tmp_path, config_name)
    trainer.model.eval()
    src, tgt_in, tgt_out = trainer.task.batch("train", 4, 0, 0, None)
    pad = torch.zeros(4, 3, dtype=torch.long)
    padded = (torch.cat([src, pad], 1), torch.cat([tgt_in, pad], 1), torch.cat([tgt_out, pad], 1))
    torch.testing.assert_close(
        trainer.task.loss(trainer.model, padded), trainer.task.loss(trainer.model, (src, tgt_in, tgt_out))
    )


@pytest.mark.parametrize("config_name", ["dates-rnn.toml", "numbers-ko-transformer.toml"])
def test_train_reports_translation_scores_and_resumes_bit_identically(tmp_path, config_name):
    full = make_trainer(tmp_path / "full", config_name, ["data.eval_strategy='beam'", "data.eval_num_beams=2"])
    metrics = full.fit()
    for split in ("test", "long"):
        scores = metrics["evaluation"][split]
        assert scores["count"] == 12 and 0 <= scores["exact_match"] <= 100 and 0 <= scores["bleu"] <= 100
        assert sum(b["count"] for b in scores["buckets"].values()) == 12
    part = make_trainer(tmp_path / "part", config_name, ["data.eval_strategy='beam'", "data.eval_num_beams=2"])
    real_step = part._train_step

    def stop_after_five() -> float:
        if part.step == 5:
            raise KeyboardInterrupt  # as Ctrl-C: the Trainer saves step 5 and stops
        return real_step()

    part._train_step = stop_after_five  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        part.fit()
    resumed = make_trainer(tmp_path / "part", config_name, ["data.eval_strategy='beam'", "data.eval_num_beams=2"])
    assert resumed.resume() == 5
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_checkpoint_info(tmp_path / "part").meta["kind"] == full.task.kind


def test_a_tsv_file_is_a_task(tmp_path):
    lines = [f"{n}\t{'x' * (n % 5 + 1)}" for n in range(40)]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines), encoding="utf-8")
    splits = load_pair_splits("ignored", str(tmp_path / "pairs.tsv"), seed=0)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [36, 2, 2] and "long" not in splits
    assert sorted(p for s in splits.values() for p in s) == sorted(tuple(line.split("\t")) for line in lines)
    trainer = make_trainer(tmp_path / "run", "dates-rnn.toml", [f"data.path={tmp_path / 'pairs.tsv'}"])
    assert set(trainer.fit()["evaluation"]) == {"test"}
    (tmp_path / "few.tsv").write_text("a\tb\n")
    with pytest.raises(ConfigError, match="at least 20"):
        load_pair_splits("", str(tmp_path / "few.tsv"))


def test_scores_by_hand():
    hyps = ["2021 - 03 - 05", "2099-01-01", "a b c d"]
    refs = ["2021 - 03 - 05", "2099-01-02", "a b c d"]
    sources = ["March 5, 2021", "Jan 1 2099", "xy"]
    scores = score_translations(hyps, refs, sources)
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert set(scores["buckets"]) == {"0-4", "10-14"}
    assert scores["buckets"]["0-4"]["exact_match"] == 100 and scores["buckets"]["10-14"]["exact_match"] == 50
    assert score_translations(refs, refs, sources)["bleu"] == pytest.approx(100)
    assert score_translations(["z"] * 3, refs, sources)["bleu"] == pytest.approx(0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.share_embeddings=true"], "needs data.shared_vocab"),
        (["data.bleu_tokenize='words'"], "not a sacrebleu tokenizer"),
        (["data.target_tokenizer='bpe'"], "data.target_tokenizer must be one of"),
        (["data.task='dates2'"], "unknown data.task 'dates2'"),
        (["data.eval_strategy='sample'"], "data.eval_strategy must be greedy or beam"),
    ],
)
def test_data_and_model_mismatches_are_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_trainer(tmp_path, "dates-transformer.toml", overrides)
    with pytest.raises(ConfigError, match="model.max_source_len=8"):
        make_trainer(tmp_path, "dates-rnn.toml", ["model.max_source_len=8"])
