"""Every exported name of qkv has its own docstring: what the API reference (docs/, built by mkdocstrings from
these docstrings) shows for it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing

import pytest

PACKAGES = [
    "qkv",
    "qkv.analysis",
    "qkv.attention",
    "qkv.attention.hooks",
    "qkv.attention.mods",
    "qkv.data",
    "qkv.decoding",
    "qkv.devices",
    "qkv.errors",
    "qkv.models",
    "qkv.models.pixels",
    "qkv.pretrained",
    "qkv.runs",
    "qkv.tokenizers",
    "qkv.training",
    "qkv.visualization",
]


def _own_doc(obj: object) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc and doc.startswith(f"{obj.__name__}("):
        return ""  # (the signature dataclasses write when the class has no docstring)
    return (doc or "").strip()


def exported() -> list[tuple[str, object]]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if inspect.ismodule(value) or not (callable(value) or inspect.isclass(value)):
                continue  # (submodules have their own entry; constants are documented where they are defined)
            if typing.get_origin(value) is not None:
                continue  # a type alias (MaskMod, Edit): documented by a comment where it is defined
            names.append((f"{package}.{name}", value))
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_a_docstring(package):
    assert (importlib.import_module(package).__doc__ or "").strip(), f"{package} has no module docstring"


def test_every_exported_name_has_its_own_docstring():
    missing = sorted({name for name, value in exported() if not _own_doc(value)})
    assert not missing, f"{len(missing)} exported names have no docstring: {', '.join(missing)}"
