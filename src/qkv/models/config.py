"""What every model config shares: building from a dict with checked keys, and back."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any, TypeVar

from qkv.errors import ConfigError

__all__ = ["ModelConfig"]

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for a model's ``@dataclass`` config; subclasses add ``validate()``."""

    def validate(self) -> None:  # pragma: no cover - every config overrides it
        pass

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # (cls is a dataclass: every config is)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _nested(value, hints[name], name) for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # (self is a dataclass)

    def check_positive(self, *names: str) -> None:
        """ConfigError naming the first of ``names`` that is below 1."""
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")

    def check_choice(self, name: str, choices: tuple[str, ...] | None = None) -> None:
        """ConfigError unless the field is one of ``choices`` (default: its ``Literal[...]`` annotation's)."""
        if choices is None:  # the nearest class that declares the field as a Literal (a subclass may widen it)
            declared = (_hint(klass, name) for klass in type(self).__mro__ if klass is not object)
            choices = next((typing.get_args(t) for t in declared if typing.get_origin(t) is typing.Literal), ())
            if not choices:
                return
        if getattr(self, name) not in choices:
            raise ConfigError(f"model.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def check_dropout(self, name: str = "dropout") -> None:
        value = getattr(self, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1), got {value}")


def _hint(klass: type, name: str) -> object:
    """``klass``'s type hint for ``name`` (None when it has none, or when a class defined in a function cannot
    resolve its own annotations)."""
    try:
        return typing.get_type_hints(klass).get(name)
    except NameError:
        return None


def _nested(value: object, annotation: object, name: str) -> object:
    """A dict for a field typed with a dataclass (or ``dataclass | None``, e.g. ``rope``) as that dataclass; any
    other value as it is."""
    if not isinstance(value, dict):
        return value
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for option in (annotation, *options):
        if isinstance(option, type) and is_dataclass(option):
            known = {f.name for f in fields(option)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"unknown model.{name} keys {unknown}; known: {sorted(known)}")
            try:
                return option(**value)
            except TypeError as exc:  # a required key missing
                raise ConfigError(f"model.{name}: {exc}") from None
    return value
