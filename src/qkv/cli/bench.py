"""``qkv bench``: run the published benchmarks on this machine and print the table."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from qkv.cli.common import add_device_option
from qkv.errors import ConfigError

__all__ = ["add_parser"]

SUITES = ("attention",)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes comma-separated integers like 1024,2048, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes needs positive sequence lengths, got {text!r}")
    return sizes


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="run a benchmark suite and print qkv vs reference",
        description="Run a benchmark suite on this machine: qkv's figure, the reference's figure and their ratio, "
        "measured in the same run, printed as a Markdown table and optionally written to a file.",
    )
    p.add_argument("suite", choices=SUITES, help="which suite: attention = P1-P3 of the attention core")
    p.add_argument("--sizes", type=_sizes, help="sequence lengths for P1 and P2, e.g. 1024,2048 (default: published)")
    p.add_argument("--long", type=int, metavar="N", help="sequence length of the sliding-window case P3 (16384)")
    p.add_argument("--window", type=int, help="window of P3 (256)")
    p.add_argument("--repeats", type=int, help="timed runs per figure; the median is reported (5)")
    add_device_option(p, default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes that finish in about a minute on 2 cores")
    p.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.benchmarking.attention import AttentionBenchConfig, run_attention_bench
    from qkv.cli.common import check_output_files
    from qkv.devices import resolve_device

    check_output_files({"out": (".md",)}, out=args.out)
    config = AttentionBenchConfig.quick() if args.quick else AttentionBenchConfig()
    config.device = str(resolve_device(args.device, what="--device"))
    if args.sizes:
        config.p1_sizes = config.p2_sizes = args.sizes
    for field, value in (("p3_size", args.long), ("window", args.window), ("repeats", args.repeats)):
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{field.replace('p3_size', 'long')} must be >= 1, got {value}")
            setattr(config, field, value)
    if args.long is not None:  # the programmable-attention rows run at the long length too
        config.mods_size = config.flex_size = args.long
    command = (
        "qkv bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["bench"]
        else "qkv bench attention"
    )
    report = run_attention_bench(config, command, progress=not args.no_progress)
    print(report.markdown())
    if args.out:
        print(f"written to {report.write(args.out)}")
    return 0
