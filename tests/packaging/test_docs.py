"""The API reference builds from the docstrings, offline, with mkdocs --strict: a docstring that names a parameter
the function does not have, or a page that points nowhere, fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_reference_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "api" / "decoding" / "index.html").read_text(encoding="utf-8")
    assert "GenerationConfig" in page and "max_new_tokens" in page  # the docstrings made it in
    assert "fonts.googleapis" not in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")  # offline
