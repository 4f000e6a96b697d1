"""Headless Debian Chromium driven by Playwright, for the tests that look at the stack's UIs as a person.

Never `playwright install`: the machine cannot download browsers, so Playwright is handed
/usr/bin/chromium. Screenshots go to tests/artifacts/ (git-ignored); look at them when a test fails.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import REPO_ROOT, Stack

if TYPE_CHECKING:  # an optional test dependency: imported by the test itself, or skipped
    from playwright.sync_api import Page

CHROMIUM = shutil.which("chromium")
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    # Nothing leaves loopback: no update checks, component downloads, sync or first-run pages.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Single clicks wait this long for the page; the UI's first load on a busy two-core machine is slow.
UI_TIMEOUT_MS = 60_000

@contextlib.contextmanager
def signed_in_page(stack: Stack, tmp_path: Path, prefix: str) -> Iterator[tuple[Any, Page, Callable[[str], None]]]:
    """Playwright's sync API, a page of a fresh Chromium profile that answers the MLflow server's basic-auth
    challenge as the pipeline user, and `screenshot(name)` into tests/artifacts/ (one on failure too)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)"
    )
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile: no cookies, no stored UI state
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            http_credentials={"username": stack.tracking_auth[0], "password": stack.tracking_auth[1]},
            viewport={"width": 1600, "height": 1100},
        )
        page = browser.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)

        def screenshot(name: str) -> None:
            shots.append(ARTIFACTS_DIR / f"{prefix}_{name}.png")
            page.screenshot(path=shots[-1], full_page=True)

        try:
            yield sync_api, page, screenshot
        except Exception:
            screenshot("failure")
            raise
        finally:
            browser.close()
            print(f"{prefix} screenshots:", *shots, sep="\n  ")
