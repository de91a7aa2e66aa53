"""Browser fixtures: the system Chromium (installed with apt-get when missing) driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _find_chromium() -> Path | None:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium. It never skips: without a browser the browser tests fail."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(
            "Chromium is not installed and these tests are not running as root, so they cannot "
            "install it: run `apt-get update && apt-get install -y chromium` as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed ({result.returncode}) while installing Chromium:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    found = _find_chromium()
    if not found:
        pytest.fail("`apt-get install -y chromium` succeeded but no chromium executable was found")
    return found


@pytest.fixture
def browser(chromium: Path) -> Iterator[Browser]:
    """A headless Chromium. Playwright drives the system browser; it downloads none of its own."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
