"""One table states what every numeric [train] and [data] setting may be; each bound is enforced on both sides."""

from __future__ import annotations

import math
import re
import typing
from dataclasses import fields

import pytest

from qkv.errors import ConfigError
from qkv.training.config import (
    RANGES,
    DataConfig,
    ImageDataConfig,
    Range,
    RunConfig,
    Seq2SeqDataConfig,
    TrainConfig,
    load_run_config,
)

SECTIONS = [("train", TrainConfig), ("data", DataConfig), ("data", Seq2SeqDataConfig), ("data", ImageDataConfig)]


def _numeric(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in fields(cls) if hints[f.name] in (int, float)]


@pytest.mark.parametrize(("section", "cls"), SECTIONS, ids=[c.__name__ for _, c in SECTIONS])
def test_every_numeric_setting_has_a_stated_range_that_its_default_satisfies(section, cls):
    for name in _numeric(cls):
        key = f"{section}.{name}"
        assert key in RANGES, f"{key} has no row in qkv.training.config.RANGES"
        assert getattr(cls(), name) in RANGES[key], f"the default of {key} is outside its own range"


def _just_outside(r: Range) -> list[float]:
    """Values on the wrong side of each bound (the bound itself where it is open)."""
    outside = []
    if r.low is not None:
        outside.append(r.low if r.low_open else r.low - 1)
    if r.high is not None:
        outside.append(r.high if r.high_open else r.high + 1)
    return outside


@pytest.mark.parametrize("key", [k for k in RANGES if k.startswith("train.")])
def test_each_train_setting_is_refused_outside_its_range_and_named(key):
    name = key.split(".")[1]
    integer = typing.get_type_hints(TrainConfig)[name] is int
    for value in _just_outside(RANGES[key]):
        value = int(value) if integer else value
        with pytest.raises(ConfigError, match="^" + re.escape(f"{key} must be {RANGES[key]}, got ")):
            load_run_config(None, [f"{key}={value}"] + ([] if name in ("lr", "min_lr") else ["train.min_lr=0"]))


def test_data_settings_are_checked_for_every_kind_of_run():
    for kind, key, bad in (("gpt", "val_fraction", 0.0), ("rnn-seq2seq", "eval_size", 0), ("pixelcnn", "levels", 1)):
        config = RunConfig.from_dict({"kind": kind, "data": {key: bad}})
        with pytest.raises(ConfigError, match=f"data.{key} must be"):
            config.validate()


def test_ranges_read_as_people_write_them():
    assert [str(r) for r in (Range(1), Range(0, low_open=True), Range(0, 1, high_open=True), Range(2, 65536))] == [
        ">= 1", "> 0", "in [0, 1)", "in [2, 65536]",
    ]  # fmt: skip
    assert 0.5 in Range(0, 1, low_open=True, high_open=True) and 1 not in Range(0, 1, high_open=True)
    assert math.inf not in Range(0, 1)


def test_string_choices_come_from_the_configs_literal_types():
    """A choice field is typed ``Literal[...]``: the loader refuses anything else with the choices and the closest
    one, and the config itself refuses it when built directly; the choices are the annotation's, written once."""

    from qkv.models import GPTConfig, TransformerConfig
    from qkv.training.config import load_run_config

    with pytest.raises(ConfigError, match="model.norm must be one of 'layer', 'rms', got 'rsm'.*'rms'"):
        load_run_config(None, ["model.norm='rsm'"])
    assert typing.get_args(typing.get_type_hints(TransformerConfig)["norm_placement"]) == ("post", "pre")
    with pytest.raises(ConfigError, match="model.norm_placement must be one of post, pre, got 'middle'"):
        TransformerConfig(norm_placement="middle").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model.positions must be one of learned, sinusoidal, rotary, alibi, t5"):
        GPTConfig(positions="relative").validate()  # type: ignore[arg-type]


def test_rope_scaling_is_one_nested_table(tmp_path):
    """``[model.rope]`` in TOML is a RopeScaling (checked when made); a saved config's dict loads back as one."""
    from qkv.attention.positional import RopeScaling
    from qkv.models import LlamaConfig
    from qkv.training.config import load_run_config

    path = tmp_path / "run.toml"
    path.write_text(
        'kind = "llama"\n[model]\nmax_seq_len = 64\n[model.rope]\nkind = "llama3"\nfactor = 8.0\n'
        "original_max_seq_len = 32\n",
        encoding="utf-8",
    )
    rope = load_run_config(path).model.rope
    assert rope == RopeScaling("llama3", 8.0, 32)
    assert LlamaConfig.from_dict(LlamaConfig(rope=rope).to_dict()).rope == rope
    path.write_text('kind = "llama"\n[model.rope]\nkind = "dynamic"\nfactor = 2.0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="dynamic rope scaling needs the original context length"):
        load_run_config(path)
    path.write_text('kind = "llama"\n[model.rope]\nkind = "linear"\nfactr = 2.0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key model.rope.factr"):
        load_run_config(path)
