"""``qkv train``: train a model from a TOML config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkv.cli.common import add_device_option
from qkv.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    from qkv.models.families import families

    p = verbs.add_parser(
        name,
        help="train a model from a TOML config",
        description="Train a model described by a TOML config (a file, or a bundled one by name: qkv configs). "
        "Checkpoints (safetensors + JSON) are written atomically to OUT/checkpoints; OUT/metrics.json summarises "
        "the run. Run it under "
        "`torchrun --nproc_per_node=N` to train on N processes with the same global batch.",
    )
    p.add_argument(
        "config",
        type=Path,
        help="a TOML file with [model], [data] and [train] sections and an optional top-level kind (a model family: "
        f"{', '.join(f.name for f in families() if f.trainable)}), or the name of a config qkv ships (gpt-baby; "
        "qkv configs lists them)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 --set data.path=my.txt (repeatable; keys are "
        "checked against the config's fields)",
    )
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_device_option(p, default=None)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import shutil

    from qkv.cli.common import check_output_dir, on_interrupt, qkv_command, resume_hint
    from qkv.models.families import CAUSAL_LM, get_family
    from qkv.training import Trainer, load_checkpoint_info, load_run_config
    from qkv.training.config import RunConfig, apply_overrides
    from qkv.training.distributed import setup_distributed
    from qkv.training.lm import prepare_run_data
    from qkv.training.runs import build_run

    out = args.out or Path("runs") / args.config.stem
    overrides = [*args.overrides, *([f"train.device={args.device!r}"] if args.device is not None else [])]
    check_output_dir("out", out)
    tokenizer = None
    if args.resume:
        info = load_checkpoint_info(out)
        config = apply_overrides(RunConfig.from_dict(info.meta["config"]), overrides)
        config.validate()
        tokenizer = info.tokenizer()
    else:
        config = load_run_config(args.config, overrides)
        if (out / "checkpoints" / "latest").exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or --out for a new one")
    dist_ctx = setup_distributed(config.train.device)
    existed = out.exists()
    try:
        data_dir = None
        if get_family(config.kind).protocol == CAUSAL_LM:  # text is tokenized once, into the run: OUT/data
            data_dir = out / "data"
            if dist_ctx.is_main:
                with on_interrupt(f"preparing {config.data.path or 'the bundled corpus'}"):
                    prepare_run_data(config, data_dir, tokenizer, progress=not args.no_progress)
            dist_ctx.barrier()  # (the other processes open what rank 0 prepared)
        model, task, tokenizer = build_run(config, tokenizer, data_dir=data_dir)
        trainer = Trainer(
            model, task, config.train, out, tokenizer, config.to_dict(), dist_ctx, progress=not args.no_progress
        )
        if args.resume:
            trainer.resume()
        again = f"{qkv_command()} train {shlex.quote(str(args.config))} --out {shlex.quote(str(out))} --resume"
        with on_interrupt("training", kept="nothing was saved yet"), resume_hint(again):
            metrics = trainer.fit()
    except BaseException:  # a run that never saved a checkpoint leaves nothing behind (its prepared data neither)
        if not existed and dist_ctx.is_main and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        dist_ctx.shutdown()
    if dist_ctx.is_main:
        print(json.dumps(metrics, indent=2))
        print(f"checkpoints: {out / 'checkpoints'}\nmetrics:     {out / 'metrics.json'}")
    return 0
