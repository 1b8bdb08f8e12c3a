"""Headless Chromium for the tests: Debian's /usr/bin/chromium driven by Playwright (never its own browser
download), started with no network of its own, and pages opened with their console errors and requests watched."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@contextmanager
def chromium() -> Iterator[Any]:
    """A browser, or the test skipped where Playwright or Debian's chromium is missing."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and what it did: console errors and uncaught exceptions, and every URL it requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def leaving(self) -> list[str]:
        """The requests that would leave the machine (anything but files, data: and blob: URLs)."""
        return [url for url in self.requests if not url.startswith(("file:", "data:", "blob:"))]


def open_page(browser: Any, path: Path, width: int = 1200, height: int = 900) -> Watched:
    """Open ``path`` (a local file) in a new page, watching its errors and requests from the first byte."""
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = Watched(page)
    page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    page.on("request", lambda r: watched.requests.append(r.url))
    page.goto(path.as_uri())
    return watched
