"""The wheel a user installs: it carries the licence the metadata names, the page template and the corpus."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # offline: the build backend of the dev environment, no isolated environment to download
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("qkv-*.whl")
    return path


def test_wheel_carries_the_mit_licence(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, names
        assert z.read(licence[0]) == (ROOT / "LICENSE").read_bytes()
        metadata = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_wheel_carries_the_page_and_the_corpus(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {
        "qkv/visualization/explorer.js",
        "qkv/visualization/explorer_data.js",
        "qkv/visualization/explorer_words.js",
        "qkv/data/shakespeare/plays.txt",
    } <= names


def test_wheel_carries_every_bundled_config(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("qkv/configs/") for n in z.namelist() if n.startswith("qkv/configs/")}
    assert shipped == {p.name for p in (ROOT / "src" / "qkv" / "configs").glob("*.toml")} and len(shipped) >= 14
