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

    def leaving(self, local: str = "file:") -> list[str]:
        """The requests that would leave the machine: anything but ``local`` (files, or a server on this
        machine), data: and blob: URLs."""
        return [url for url in self.requests if not url.startswith((local, "data:", "blob:"))]


def open_page(browser: Any, target: Path | str, width: int = 1200, height: int = 900) -> Watched:
    """Open ``target`` (a local file, or a URL) in a new page, watching its errors and requests from the first
    byte."""
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = Watched(page)
    page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    page.on("request", lambda r: watched.requests.append(r.url))
    page.goto(target.as_uri() if isinstance(target, Path) else target)
    return watched
