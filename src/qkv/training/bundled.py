"""The run configurations qkv ships (``src/qkv/configs/*.toml``, installed with the package): found by name, so
``qkv train gpt-baby`` works from any directory, listed by ``qkv configs`` and copied out to edit."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from qkv.errors import ConfigError

__all__ = ["bundled_config", "bundled_configs", "config_summary", "resolve_config_path"]

SUFFIX = ".toml"


def bundled_configs() -> dict[str, Traversable]:
    """Every shipped config by name (the file name without ``.toml``), sorted."""
    folder = resources.files("qkv") / "configs"
    found = {entry.name[: -len(SUFFIX)]: entry for entry in folder.iterdir() if entry.name.endswith(SUFFIX)}
    return dict(sorted(found.items()))


def bundled_config(name: str) -> Traversable:
    """The shipped config called ``name`` (``gpt-baby`` or ``gpt-baby.toml``); a ConfigError lists the names."""
    configs = bundled_configs()
    key = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if key not in configs:
        raise ConfigError(f"qkv ships no config called {name!r}; the bundled ones: {', '.join(configs)}")
    return configs[key]


def config_summary(config: Traversable, width: int = 90) -> str:
    """The first sentence of a config's leading comment (what it trains), cut to ``width`` characters."""
    words = []
    for line in config.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    # a sentence ends at a full stop before a space, but not the one of "et al." or "e.g." in a citation
    end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\. ", text)
    text = text[: end.start() + 1] if end else text
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def resolve_config_path(ref: str | Path) -> Path | Traversable:
    """``ref`` as a file when it exists; else, when it names a shipped config (``gpt-baby``, or a path such as
    ``configs/gpt-baby.toml`` outside the repository), that one. A missing file that names none is a ConfigError
    that says where the shipped ones are listed."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file {path} does not exist (it is a directory)")
    configs = bundled_configs()
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    if stem in configs and (path.parent == Path(".") or path.parent.name == "configs"):
        return configs[stem]
    hint = f"; qkv ships one by that name: use {stem}" if stem in configs else ""
    raise ConfigError(f"config file {path} does not exist{hint} (qkv configs lists the bundled configs)")
