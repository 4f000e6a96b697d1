"""The stack's MLflow UI in a real browser: a person comparing the variants of a training run.

Headless Debian Chromium driven by Playwright (never `playwright install`: the machine cannot
download browsers, so Playwright is handed /usr/bin/chromium). The browser signs in with HTTP
basic credentials, opens the experiment, ticks the variant runs, presses Compare, and the test
reads each variant's test accuracy off the compare page. Screenshots of each step go to
tests/artifacts/ (git-ignored); look at them when the test fails.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import TINY_VARIANTS
from tests.integration.conftest import (
    EXPERIMENT_NAME,
    REPO_ROOT,
    Stack,
    StackTraining,
    experiment_runs,
    metrics_of,
)

if TYPE_CHECKING:  # an optional test dependency: imported by the test itself, or skipped
    from playwright.sync_api import Page

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"),
]

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
# The compare view rounds metric values to three decimals.
DISPLAY_TOLERANCE = 0.0005 + 1e-9


# Reads the row in one synchronous pass, so a section folding above it cannot move it mid-read.
ROW_VALUES_SCRIPT = """label => {
    const middle = box => box.top + box.height / 2;
    const name = label.getBoundingClientRect();
    return [...document.querySelectorAll("[role=grid] span")]
        .map(span => [span.getBoundingClientRect(), span.innerText.trim()])
        .filter(([box]) => box.left > name.right && Math.abs(middle(box) - middle(name)) < box.height / 2)
        .sort(([a], [b]) => a.left - b.left)
        .map(([, text]) => text);
}"""


def _metric_row(page: Page, metric: str) -> list[str]:
    """The values the compare view shows right of a metric's name, left to right (one per run).

    The metrics table is two virtualised grids side by side (names, values), not a <table>, so a
    row is what lines up with the name on screen, as a person reads it.
    """
    label = page.get_by_role("link", name=metric, exact=True)
    label.scroll_into_view_if_needed()
    return label.evaluate(ROW_VALUES_SCRIPT)


def test_compare_view_shows_each_variant_and_its_test_accuracy(
    stack: Stack, stack_training: StackTraining, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)"
    )
    test_accuracy = {run_["info"]["run_name"]: metrics_of(run_)["test_accuracy"] for run_ in experiment_runs(stack)}
    assert sorted(test_accuracy) == sorted(TINY_VARIANTS)
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
            shots.append(ARTIFACTS_DIR / f"mlflow_ui_{name}.png")
            page.screenshot(path=shots[-1])

        try:
            page.goto(f"{stack.mlflow_url}/#/experiments")
            page.get_by_role("link", name=EXPERIMENT_NAME, exact=True).click()
            # MLflow 3 opens an experiment on its GenAI overview; the runs table is under "Model training".
            page.get_by_text("Model training", exact=True).click()
            for variant in TINY_VARIANTS:
                row = page.get_by_role("row").filter(has_text=variant)
                row.get_by_role("checkbox", name=re.compile("toggle row selection")).check()
            screenshot("1_runs_selected")
            page.get_by_role("button", name="Compare", exact=True).click()
            page.wait_for_url(re.compile(r"#/compare-runs\?"))
            heading = page.get_by_role("heading", name=f"Comparing {len(TINY_VARIANTS)} Runs from 1 Experiment")
            sync_api.expect(heading).to_be_visible()
            # Room for the table: close the assistant side panel, fold the plots and the parameters.
            assistant_close = page.get_by_role("button", name="Close", exact=True)
            if assistant_close.count():
                assistant_close.first.click()
            page.get_by_role("button", name="Visualizations", exact=True).click()
            page.get_by_role("button", name="Parameters", exact=True).click()

            run_names = (
                page.get_by_role("row")
                .filter(has=page.get_by_role("rowheader", name="Run Name:"))
                .get_by_role("cell")
                .all_inner_texts()
            )
            shown = dict(zip(run_names, _metric_row(page, "test_accuracy"), strict=True))
            screenshot("2_compare")
        except Exception:
            screenshot("failure")
            raise
        finally:
            browser.close()
            print("MLflow UI screenshots:", *shots, sep="\n  ")

    assert sorted(shown) == sorted(TINY_VARIANTS), f"the compare view lists {run_names}"
    for variant, expected in test_accuracy.items():
        assert float(shown[variant]) == pytest.approx(expected, abs=DISPLAY_TOLERANCE), (
            f"{variant}: the compare view shows test_accuracy {shown[variant]}, MLflow's API says {expected}"
        )
