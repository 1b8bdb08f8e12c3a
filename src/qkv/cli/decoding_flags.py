"""The decoding verbs' flags, made from :class:`qkv.GenerationConfig`'s fields: one source of names, types, help
texts and defaults. A verb that must default differently (``qkv generate`` samples) says so in its ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_decoding_flags", "decoding_config", "flag_name"]


def _field(name: str) -> dataclasses.Field:
    from qkv.decoding.config import GenerationConfig

    return {f.name: f for f in dataclasses.fields(GenerationConfig)}[name]


def flag_name(name: str) -> str:
    """The CLI's spelling of a :class:`GenerationConfig` field: ``--max-new-tokens``, ``--no-cache``."""
    return _field(name).metadata.get("flag", "--" + name.replace("_", "-"))


def _value_type(name: str) -> Any:
    """The field's type without ``| None``: ``int``, ``float``, ``bool`` or a ``Literal``."""
    from qkv.decoding.config import GenerationConfig

    hint = typing.get_type_hints(GenerationConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_decoding_flags(
    parser: argparse.ArgumentParser, names: Sequence[str], defaults: Mapping[str, object] | None = None
) -> None:
    """A flag per field in ``names`` (in that order). ``defaults``: this verb's own default for a field; its help
    then names both, so a reader of ``--help`` knows the API's."""
    defaults = defaults or {}
    for name in names:
        field = _field(name)
        api_default = field.default
        default = defaults.get(name, api_default)
        help_text = field.metadata["help"]
        kind = _value_type(name)
        flag = flag_name(name)
        if kind is bool:  # a switch away from the default: --compile, --no-cache
            action = "store_false" if api_default else "store_true"
            switch_help = field.metadata.get("flag_help", help_text)
            parser.add_argument(flag, dest=name, action=action, default=default, help=switch_help)
            continue
        if default != api_default:
            api = "unset" if api_default is None else api_default
            help_text += f" (default here: {default}; the API's: {api})"
        elif default is not None:
            help_text += f" (default: {default})"
        options: dict[str, Any] = {"dest": name, "default": default, "help": help_text}
        if typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = kind
            options["metavar"] = name.split("_")[-1].upper() if kind is int else None
        parser.add_argument(flag, **{k: v for k, v in options.items() if v is not None or k == "default"})


def decoding_config(args: argparse.Namespace, names: Sequence[str], **extra: Any):  # noqa: ANN201
    """The :class:`GenerationConfig` of the verb's flags (and ``extra`` fields the verb sets itself). A bad value
    is a one-line error naming the flag, as the user typed it."""
    from qkv.decoding.config import GenerationConfig
    from qkv.errors import ConfigError

    try:
        return GenerationConfig(**{name: getattr(args, name) for name in names}, **extra)
    except ConfigError as error:  # the config speaks of fields; the user typed flags
        message = str(error)
        for name in names:
            message = re.sub(rf"(?<![\w-]){name}(?![\w])", flag_name(name), message)
            message = re.sub(rf"{flag_name(name)}='([\w-]+)'", rf"{flag_name(name)} \1", message)  # as typed
        raise ConfigError(message) from None
