"""``qkv configs``: the run configurations qkv ships, listed, shown and copied out to edit (torchtune's ``tune ls``
and ``tune cp``)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="list the bundled training configs, show one, or copy one to edit",
        description="The configs qkv ships, usable by name from any directory (qkv train gpt-baby). "
        "qkv configs lists them; qkv configs show NAME prints one; qkv configs cp NAME FILE copies one to edit "
        "(then: qkv train FILE).",
    )
    p.add_argument("action", nargs="?", choices=("list", "show", "cp"), default="list", help="(default: list)")
    p.add_argument("name", nargs="?", help="a config's name, e.g. gpt-baby (for show and cp)")
    p.add_argument("file", nargs="?", type=Path, help="where cp writes the copy (default: NAME.toml here)")
    p.add_argument("--force", action="store_true", help="cp: overwrite FILE if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qkv.cli.common import check_output_files, qkv_command
    from qkv.errors import ConfigError
    from qkv.training.bundled import bundled_config, bundled_configs, config_summary

    if args.action == "list":
        if args.name is not None:
            raise ConfigError(f"qkv configs list takes no name (got {args.name!r}); to see one: qkv configs show NAME")
        configs = bundled_configs()
        width = max(map(len, configs))
        for config_name, config in configs.items():
            print(f"{config_name:<{width}}  {config_summary(config)}")
        print(f"\ntrain one: {qkv_command()} train NAME   copy one to edit: {qkv_command()} configs cp NAME FILE")
        return 0
    if args.name is None:
        raise ConfigError(f"qkv configs {args.action} needs a config's name, e.g. qkv configs {args.action} gpt-baby")
    config = bundled_config(args.name)
    text = config.read_text(encoding="utf-8")
    if args.action == "show":
        if args.file is not None:
            raise ConfigError(f"qkv configs show takes no FILE (got {args.file}); to copy: qkv configs cp NAME FILE")
        print(text, end="")
        return 0
    target: Path = args.file or Path(config.name)
    check_output_files({"FILE": (".toml",)}, FILE=target)
    if target.exists() and not args.force:
        raise ConfigError(f"{target} already exists; pass --force to overwrite it, or name another FILE")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"written: {target} (edit it, then: {qkv_command()} train {target})")
    return 0
