"""``qkv prepare``: tokenize a corpus once into shards that ``qkv train`` reads in constant memory."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="tokenize a text corpus once into shards for training (any size, constant memory)",
        description="Tokenize a UTF-8 text file, or every file under a directory, into token shards (uint16 or "
        "uint32), a train/validation split by document (documents end at blank lines and file ends), the tokenizer "
        "and a manifest with counts and checksums. Train on the result with --set data.path=OUT. Interrupted, the "
        "same command resumes; run twice, it writes identical files.",
    )
    p.add_argument(
        "text",
        type=Path,
        help="a UTF-8 text file, a directory of them, or a HuggingFace dataset (a save_to_disk directory or the name "
        "of one in the local cache, read offline; needs pip install datasets)",
    )
    p.add_argument("--out", type=Path, required=True, help="the data directory to write (new, or one to resume)")
    p.add_argument(
        "--tokenizer",
        default="char",
        help="char (every character of the input; default), bpe[:VOCAB] (byte-level BPE trained on a sample; "
        "VOCAB defaults to 8192) or a tokenizer.json file to use as is",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="the tail of the input that validates (0.1)")
    p.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="bytes that are not UTF-8: strict refuses the file (saying how many and where), replace turns each into "
        "U+FFFD and counts them",
    )
    p.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto", help="token id type (auto)")
    p.add_argument("--shard-tokens", type=int, default=1 << 26, help="tokens per shard, about (67,108,864)")
    p.add_argument(
        "--sample-mb", type=float, default=32, help="megabytes of the input a BPE trains on, spread over it (32)"
    )
    p.add_argument("--split", default="train", help="a dataset's split to prepare (train)")
    p.add_argument("--text-column", default="text", help="a dataset's column of text (text); each row is a document")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import math
    import shlex

    from qkv.cli.common import check_output_dir, on_interrupt, qkv_command
    from qkv.data.prepare import PrepareSettings, prepare
    from qkv.errors import ConfigError

    if not (math.isfinite(args.sample_mb) and 0 < args.sample_mb <= 1 << 20):
        raise ConfigError(f"--sample-mb must be a positive number of megabytes, got {args.sample_mb}")
    settings = PrepareSettings(
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        errors=args.errors,
        dtype=args.dtype,
        shard_tokens=args.shard_tokens,
        sample_bytes=int(args.sample_mb * (1 << 20)),
    )
    check_output_dir("out", args.out, what="data directory")
    with on_interrupt(f"preparing {args.text}"):
        corpus = prepare(args.text, args.out, settings, progress=not args.no_progress, split=args.split,
                         text_column=args.text_column)  # fmt: skip
    m = corpus.manifest
    for split in ("train", "val"):
        shards = m["splits"][split]
        print(f"{split}: {sum(s['tokens'] for s in shards):,} tokens, {sum(s['documents'] for s in shards):,} "
              f"documents, {len(shards)} shard{'s' * (len(shards) != 1)}")  # fmt: skip
    print(f"vocabulary: {m['vocab_size']:,} ({m['dtype']}); written to {args.out}")
    print(f"train on it: {qkv_command()} train gpt-baby --set {shlex.quote(f'data.path={args.out}')}")
    return 0
