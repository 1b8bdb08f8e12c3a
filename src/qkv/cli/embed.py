"""``qkv embed``: sentence embeddings from the command line, written as .npy or .jsonl."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkv.cli.common import add_device_option
from qkv.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="embed sentences with a pretrained encoder (default: the bundled all-MiniLM-L6-v2)",
        description="Embed sentences into L2-normalised vectors (mean pooling over real tokens, as "
        "sentence-transformers does). Texts come from the arguments or from --file (one per line).",
    )
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("--file", type=Path, help="a UTF-8 text file with one text per line (blank lines are skipped)")
    p.add_argument("--model", default="minilm", help="'minilm' (pip install 'qkv[minilm]') or a BERT-format directory")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (32)")
    p.add_argument(
        "--out",
        type=Path,
        help="write to .npy (a matrix) or .jsonl (one {text, embedding} per line); default: print JSON lines",
    )
    add_device_option(p, dtype=True, dtype_default="auto")
    p.add_argument(
        "--calibration",
        type=Path,
        help="with --dtype int8: a UTF-8 text file of texts like the ones to embed, one per line, on which the int8 "
        "weights are rounded (GPTQ; default: 256 lines of the bundled plays)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.cli.common import check_output_files, warn
    from qkv.data.text import read_text_file
    from qkv.pretrained import embed, load_tokenizer
    from qkv.pretrained.calibration import CALIBRATION_LINES

    texts = list(args.texts)
    if args.file is not None:
        texts += [line.strip() for line in read_text_file(args.file).splitlines() if line.strip()]
    if not texts:
        raise ConfigError("nothing to embed: give texts as arguments or --file FILE")
    if any(not text.strip() for text in texts):
        raise ConfigError("a text is empty: give something to embed, e.g. qkv embed 'a sentence'")
    check_output_files({"out": (".npy", ".jsonl")}, out=args.out)
    calibration = None
    if args.calibration is not None:
        if args.dtype != "int8":
            raise ConfigError(f"--calibration rounds int8 weights; add --dtype int8 (not {args.dtype})")
        # (read_text_file names a missing, unreadable or blank file)
        calibration = [line.strip() for line in read_text_file(args.calibration).splitlines() if line.strip()]
    if args.dtype == "int8":
        source = (
            f"{len(calibration)} lines of {args.calibration}" if calibration else f"{CALIBRATION_LINES} bundled lines"
        )
        print(f"int8: rounding the weights by GPTQ on {source} first (a few seconds)", file=sys.stderr)
    vectors = embed(texts, model=args.model, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                    calibration=calibration)  # fmt: skip
    tokenizer = load_tokenizer(args.model)  # (loaded and checked by embed: a bad --model is named there)
    cut = tokenizer.cut(texts)
    if cut:  # as qkv attention does: say so rather than embed the beginning of a text silently
        which = f"text {cut[0] + 1}" + (f" and {len(cut) - 1} more" if len(cut) > 1 else "")
        warn(f"{which} is longer than the model's {tokenizer.max_length} tokens; only the first {tokenizer.max_length} "
             "tokens are embedded")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out is not None and args.out.suffix == ".npy":
        import numpy as np

        np.save(args.out, vectors.numpy())
    else:
        lines = (
            json.dumps({"text": t, "embedding": [round(x, 7) for x in v.tolist()]}, ensure_ascii=False)
            for t, v in zip(texts, vectors)
        )
        if args.out is None:
            sys.stdout.writelines(line + "\n" for line in lines)
            return 0
        args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{len(texts)} embeddings of size {vectors.shape[1]} written to {args.out}", file=sys.stderr)
    return 0
