"""Language modelling as a training task: tokenizer + data + a causal LM (GPT, Llama, ...) + next-token
cross-entropy."""

from __future__ import annotations

import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.prepare import PrepareSettings, prepare
from qkv.data.shards import MANIFEST, PreparedCorpus, read_manifest
from qkv.data.sources import list_sources
from qkv.data.text import CORPUS_PATH, LMData, PackedLMData, ShardDocuments
from qkv.errors import ConfigError
from qkv.models.families import CAUSAL_LM, get_family
from qkv.tokenizers import Tokenizer
from qkv.training.config import RunConfig

__all__ = ["LMTask", "build_lm", "open_lm_corpus", "prepare_run_data"]


@dataclass
class LMTask:
    data: LMData | PackedLMData
    kind: str = "gpt"

    @property
    def tokens_per_row(self) -> int:
        return self.data.context

    def batch(
        self, split: str, batch_size: int, seed: int, step: int, rows: slice | None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        return self.data.batch(split, batch_size, seed, step, rows)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y, *documents = batch  # packed batches carry the document of each token
        logits = model(x, document_ids=documents[0]).logits if documents else model(x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def build_lm(
    config: RunConfig, tokenizer: Tokenizer | None = None, data_dir: Path | None = None
) -> tuple[nn.Module, LMTask, Tokenizer]:
    """The model, task and tokenizer of a run (a tokenizer from a checkpoint is reused as is).

    ``data.path`` is a prepared data directory (``qkv prepare``), a text file or a directory of them (empty: the
    bundled corpus). Text is prepared into ``data_dir`` (a run's ``OUT/data``: prepared once, reused when the run
    resumes) or, without one, in a temporary directory read into memory (for small corpora)."""
    corpus = open_lm_corpus(config, tokenizer, data_dir)
    config.model.vocab_size = corpus.tokenizer.vocab_size
    torch.manual_seed(config.train.seed)  # the same initial weights on every process and every run
    model = get_family(config.kind, protocol=CAUSAL_LM).build(config.model)
    context = config.model.max_seq_len
    if config.data.pack:
        if "document_ids" not in inspect.signature(model.forward).parameters:
            raise ConfigError(f"data.pack = true needs a model that takes document_ids; {config.kind} does not")
        train, val = (ShardDocuments(corpus.tokens[s], corpus.documents[s]) for s in ("train", "val"))
        data: LMData | PackedLMData = PackedLMData(train, val, context)
    else:
        data = LMData(corpus.tokens["train"], corpus.tokens["val"], context)
    return model, LMTask(data, kind=config.kind), corpus.tokenizer


PROGRESS_BYTES = 32 << 20  # text this large shows a progress bar while a run prepares it


def is_prepared(path: str | Path | None) -> bool:
    """Whether ``path`` is a prepared data directory (it has a manifest)."""
    return path is not None and str(path) != "" and (Path(path) / MANIFEST).is_file()


def prepare_settings(config: RunConfig) -> PrepareSettings:
    """How a run prepares its text: the config's tokenizer and validation fraction."""
    spec = f"bpe:{config.data.bpe_vocab_size}" if config.data.tokenizer == "bpe" else config.data.tokenizer
    if spec != "char" and not spec.startswith("bpe:"):
        raise ConfigError(f"unknown tokenizer kind {config.data.tokenizer!r}; choose 'char' or 'bpe'")
    return PrepareSettings(tokenizer=spec, val_fraction=config.data.val_fraction)


def prepare_run_data(config: RunConfig, data_dir: Path, tokenizer: Tokenizer | None, progress: bool = True) -> None:
    """Prepare a run's text into ``data_dir`` unless ``data.path`` is prepared already or the run prepared it before
    (it resumes: it goes on with the data it began with; an interrupted preparation is finished). ``tokenizer`` (a
    checkpoint's) is used when the run has no prepared data yet (it began before runs kept their data)."""
    if is_prepared(config.data.path):
        return
    manifest = read_manifest(data_dir) if data_dir.is_dir() else None
    if manifest is not None and manifest["complete"]:
        return
    given = tokenizer if manifest is None or manifest["settings"]["tokenizer"] == "given" else None
    source = config.data.path or CORPUS_PATH
    # (a bar for a second's work is noise: the run's own bar follows at once)
    large = sum(s.size for s in list_sources(source)) >= PROGRESS_BYTES
    prepare(source, data_dir, prepare_settings(config), given, progress=progress and large)


def open_lm_corpus(config: RunConfig, tokenizer: Tokenizer | None, data_dir: Path | None) -> PreparedCorpus:
    """The prepared corpus of a run (see :func:`build_lm`); a tokenizer given must be the one it was prepared with."""
    if not is_prepared(config.data.path) and data_dir is None:  # a small corpus, prepared in memory
        with tempfile.TemporaryDirectory(prefix="qkv-data-") as tmp:
            return prepare(config.data.path or CORPUS_PATH, Path(tmp) / "data", prepare_settings(config), tokenizer,
                           progress=False).in_memory()  # fmt: skip
    if data_dir is not None:
        prepare_run_data(config, data_dir, tokenizer, progress=False)
    corpus = PreparedCorpus(config.data.path if is_prepared(config.data.path) or data_dir is None else data_dir)
    if tokenizer is not None and _serialized(tokenizer) != _serialized(corpus.tokenizer):
        raise ConfigError(
            f"the run's tokenizer is not the one {corpus.directory} was prepared with; train on the data it was "
            "prepared with, or start a new run"
        )
    return corpus


def _serialized(tokenizer: Tokenizer) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp) / "t.json")
        return (Path(tmp) / "t.json").read_bytes()
