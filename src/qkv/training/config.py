"""Run configurations: dataclasses loaded from TOML, with ``--set section.key=value`` overrides checked against the
fields (unknown keys and wrong types are errors that suggest the right spelling)."""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

from qkv.devices import precision_candidates, resolve_compile, resolve_device
from qkv.errors import ConfigError
from qkv.models.families import CAUSAL_LM, IMAGE, families, get_family

__all__ = [
    "DataConfig",
    "ImageDataConfig",
    "RunConfig",
    "Seq2SeqDataConfig",
    "TrainConfig",
    "apply_overrides",
    "data_config_type",
    "load_run_config",
]


@dataclass
class DataConfig:
    """The ``[data]`` table of a run config: which corpus or task, how it is tokenized, split and batched."""

    # a UTF-8 text file or a directory of them (tokenized once into the run's OUT/data), or a directory that
    # `qkv prepare` wrote (read where it is, with its own tokenizer and split); empty = the bundled Shakespeare corpus
    path: str = ""
    tokenizer: str = "char"  # char | bpe (how text is tokenized; a prepared directory brings its own)
    bpe_vocab_size: int = 512
    val_fraction: float = 0.1  # the tail of the text, by document, that validates
    pack: bool = False  # documents (separated by blank lines) packed into rows, a document mask between them


@dataclass
class Seq2SeqDataConfig:
    task: str = "dates"  # dates | numbers-en | numbers-ko (generated from seed); ignored when path is set
    path: str = ""  # a UTF-8 file of source<TAB>target lines instead (split 90/5/5 after shuffling with seed)
    seed: int = 0
    train_size: int = 20000  # generated tasks: training pairs
    eval_size: int = 1000  # generated tasks: pairs in each of valid, test and long
    source_tokenizer: str = "char"  # char | word
    target_tokenizer: str = "char"  # char | word
    shared_vocab: bool = False  # one vocabulary for both sides (for model.share_embeddings)
    bleu_tokenize: str = "13a"  # sacrebleu's tokenizer for BLEU: 13a (words), char (e.g. Korean numerals), intl, ...
    eval_strategy: str = "greedy"  # how the end-of-run evaluation decodes: greedy | beam
    eval_num_beams: int = 4  # beam width when eval_strategy = "beam"


@dataclass
class ImageDataConfig:
    # a folder of .png files, an .npy array (N, H, W) of levels, or a directory with MNIST's four IDX files;
    # empty = scikit-learn's 8x8 digits
    path: str = ""
    binarise: bool = False  # 2 levels: on from half the range; MNIST: on with probability level / 255, by data.seed
    size: int = 8  # the digits: 8, or 16 / 28 upsampled
    levels: int = 256  # user images: how many levels their values can take
    conditional: bool = False  # condition on the class label (the digits' 0-9)
    seed: int = 0  # the train / valid / test split (MNIST's is fixed: the seed of its binarization)
    test_images: int = 0  # the final report's test images: 0 = all of them (the papers' figure); > 0 a quick look


PARALLEL = ("ddp", "fsdp")


def fsdp_runs_on_cpus() -> bool:
    """FSDP2 shards on CPU processes (gloo) from torch 2.6; before, it needs CUDA streams."""
    return TorchVersion(torch.__version__) >= "2.6"  # (a version comparison; local tags such as +cpu ignored)


@dataclass
class TrainConfig:
    """The ``[train]`` table of a run config: steps, batch, optimiser and schedule, device, precision, checkpoints.

    Every numeric field has a range in :data:`RANGES`, checked by :meth:`validate` before any work.
    """

    steps: int = 2000
    batch_size: int = 12  # sequences per micro-step, summed over all processes
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    # the run ends with the weights of its evaluation with the lowest val loss (RUN/best.safetensors): early stopping
    # by validation without guessing the step count; the final checkpoint and the report hold them
    keep_best: bool = False
    seed: int = 1337
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (by the hardware) | tune (timed) | fp32 | bf16 | fp16 (autocast): qkv.devices
    compile: bool | str = "auto"  # torch.compile the training step: auto (on CUDA with Triton) | true | false
    parallel: str = "ddp"  # under torchrun: ddp (a full copy per process) | fsdp (parameters sharded, FSDP2)
    flush_denormal: bool = True  # treat fp32 denormals as 0 while training: CPUs slow down badly on them
    log_interval: int = 50

    def validate(self) -> None:
        """ConfigError for a setting out of its range (:data:`RANGES`) or inconsistent with another, before any
        work, so nothing is printed or written first."""
        check_ranges("train", self)
        if self.min_lr > self.lr:
            raise ConfigError(
                f"train.min_lr ({self.min_lr:g}) must be <= train.lr ({self.lr:g}): it is where lr decays to"
            )
        if self.parallel not in PARALLEL:
            raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.parallel == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise ConfigError(
                "train.parallel = 'fsdp' shards the model across processes: run it under torchrun with 2 or more, "
                "e.g. torchrun --nproc_per_node=2 -m qkv.cli train ..."
            )
        device = resolve_device(self.device, what="train.device")
        if self.parallel == "fsdp" and device.type == "cpu" and not fsdp_runs_on_cpus():
            raise ConfigError(
                f"train.parallel = 'fsdp' on the CPU needs torch 2.6 or newer (this is {torch.__version__}, whose "
                "FSDP2 needs CUDA streams); use train.parallel = 'ddp'"
            )
        precision_candidates(self.precision, device, what="train.precision")
        resolve_compile(self.compile, device, what="train.compile")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low``/``high`` bounds (None = unbounded), each closed unless
    ``*_open``. Printed as people write them (``>= 1``, ``> 0``, ``in [0, 1)``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        def show(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        if self.high is None:
            return f"{'>' if self.low_open else '>='} {show(self.low or 0)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{show(self.low or 0)}, {show(self.high)}{right}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
FRACTION = Range(0, 1, low_open=True, high_open=True)  # strictly between 0 and 1
BETA = Range(0, 1, high_open=True)  # Adam's betas: 1 would never forget, and torch refuses it
SEED = Range(0, 2**63 - 1)

# Every numeric setting of the [train] and [data] sections and what it may be, in one place: checked (all of them,
# before any work) by RunConfig.validate; a test fails when a numeric field has no row here. The [model] section is
# checked by each family's config (its validate()).
RANGES: dict[str, Range] = {
    "train.steps": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.lr": POSITIVE,
    "train.min_lr": AT_LEAST_0,  # and <= train.lr (checked beside it)
    "train.warmup_steps": AT_LEAST_0,
    "train.weight_decay": AT_LEAST_0,
    "train.beta1": BETA,
    "train.beta2": BETA,
    "train.grad_clip": AT_LEAST_0,  # 0 = no clipping
    "train.eval_interval": AT_LEAST_1,
    "train.eval_iters": AT_LEAST_1,
    "train.checkpoint_interval": AT_LEAST_1,
    "train.keep_checkpoints": AT_LEAST_1,
    "train.seed": SEED,
    "train.log_interval": AT_LEAST_1,
    "data.bpe_vocab_size": Range(257),  # byte-level BPE starts from the 256 bytes and needs a merge at least
    "data.val_fraction": FRACTION,
    "data.seed": SEED,
    "data.train_size": AT_LEAST_1,
    "data.eval_size": AT_LEAST_1,
    "data.eval_num_beams": AT_LEAST_1,
    "data.size": Range(2),
    "data.levels": Range(2, 65536),
    "data.test_images": AT_LEAST_0,
}


def check_ranges(section: str, settings: Any) -> None:
    """ConfigError naming the first numeric setting of ``settings`` (the ``section`` dataclass) outside its range
    in :data:`RANGES`."""
    for f in fields(settings):
        key = f"{section}.{f.name}"
        value = getattr(settings, f.name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in RANGES and numeric and value not in RANGES[key]:
            raise ConfigError(f"{key} must be {RANGES[key]}, got {value!r}")


def data_config_type(kind: str) -> type:
    """The ``[data]`` section of a run of ``kind``: text for a causal LM, source/target pairs for a seq2seq model,
    images for an image model."""
    family = get_family(kind)
    if not family.trainable:
        trainable = ", ".join(f.name for f in families() if f.trainable)
        raise ConfigError(f"kind {kind!r} is not trained by qkv train (a {family.protocol} model); train {trainable}")
    return {CAUSAL_LM: DataConfig, IMAGE: ImageDataConfig}.get(family.protocol, Seq2SeqDataConfig)


@dataclass
class RunConfig:
    """A whole run config (a TOML file, ``qkv configs show NAME``): ``kind`` (the model family), ``[model]``,
    ``[data]`` and ``[train]``; :func:`load_run_config` reads it with ``section.key=value`` overrides.
    """

    kind: str = "gpt"  # a model family (gpt | llama | rnn-seq2seq | transformer | registered): model and data types
    model: Any = None
    data: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        data_type = data_config_type(self.kind)
        self.model = get_family(self.kind).config() if self.model is None else self.model
        self.data = data_type() if self.data is None else self.data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Every section checked (the model by its family's config, train and data by :data:`RANGES`)."""
        self.model.validate()
        check_ranges("data", self.data)
        self.train.validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        kind = data.get("kind", "gpt")
        if not isinstance(kind, str):
            known = ", ".join(f.name for f in families() if f.trainable)
            raise ConfigError(f"kind must be a string, one of {known}; got {kind!r}")
        config = cls(kind=kind)
        _merge(config, {k: v for k, v in data.items() if k != "kind"}, "")
        return config


SECTIONS = {f.name for f in fields(RunConfig)} - {"kind"}


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting int -> float where that is lossless."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        given = [option for option in options if option is not type(None)]
        if len(given) == 1:  # X | None: X's own error says what is wrong
            return _coerce(value, given[0], key)
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {annotation}, got {value!r}")
    if isinstance(annotation, type) and is_dataclass(annotation) and isinstance(value, dict):
        hints = typing.get_type_hints(annotation)
        names = {f.name for f in fields(annotation)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"unknown config key {key}.{unknown[0]}; known: {', '.join(sorted(names))}")
        try:
            return annotation(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})
        except TypeError as exc:  # a required key missing
            raise ConfigError(f"{key}: {exc}") from None
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value
        raise ConfigError(
            f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}{_suggest(str(value), choices)}"
        )
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML reads nan, inf and 1e400 (= inf); no setting means any of them
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above appear in configs
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]
    raise ConfigError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")


def _merge(target: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in fields(target)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}{_suggest(name, names)}; known: {', '.join(sorted(names))}")
        current = getattr(target, name)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; set its keys, e.g. {key}.{fields(current)[0].name}=...")
            _merge(current, value, f"{key}.")
        else:
            setattr(target, name, _coerce(value, hints[name], key))


def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, true/false, quoted strings); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: RunConfig, overrides: typing.Sequence[str]) -> RunConfig:
    """Apply ``section.key=value`` strings to ``config`` in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value (e.g. train.lr=3e-4), got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            section = parts[0]
            hint = _suggest(section, SECTIONS)
            raise ConfigError(f"--set key must be section.key with section in {sorted(SECTIONS)}, got {key!r}{hint}")
        section, name = parts
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r}{_suggest(section, SECTIONS)}; known: {sorted(SECTIONS)}"
            )
        _merge(config, {section: {name: _parse_value(text.strip())}}, "")
    return config


def load_run_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Defaults, then the TOML file (if any: a path, or the name of a config qkv ships such as ``gpt-baby``), then
    the overrides."""
    config = RunConfig()
    if path is not None:
        from qkv.training.bundled import resolve_config_path

        source = resolve_config_path(path)  # a file, or a config qkv ships, by name
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = set(data) - SECTIONS - {"kind"}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"unknown config section {name!r} in {path}{_suggest(name, SECTIONS)}")
        config = RunConfig.from_dict(data)
    apply_overrides(config, overrides)
    config.validate()
    return config
