"""The stack's MLflow UI in a real browser (tests/integration/browser.py): what a person sees of a
training run. One test ticks the variant runs, presses Compare and reads each variant's test accuracy
off the compare page; the other reads each run's dataset and duration off the runs list and opens
the error gallery on a run page. Screenshots of each step go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import TINY_VARIANTS
from tests.integration.browser import CHROMIUM, signed_in_page
from tests.integration.conftest import (
    EXPERIMENT_NAME,
    Stack,
    StackTraining,
    experiment_runs,
    metrics_of,
    tags_of,
)

if TYPE_CHECKING:  # an optional test dependency: imported by the test itself, or skipped
    from playwright.sync_api import Page

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"),
]

# The compare view rounds metric values to three decimals.
DISPLAY_TOLERANCE = 0.0005 + 1e-9


# The values of the metric whose name is `label`: the cells of the values grid at the name cell's row
# position (react-virtualized places every cell of a row at the same `top`), left to right.
ROW_VALUES_SCRIPT = """label => {
    const cell = label.closest(".ReactVirtualized__Grid__innerScrollContainer > div");
    const values = [...document.querySelectorAll(".ReactVirtualized__Grid__innerScrollContainer")]
        .find(container => !container.contains(label));
    return [...values.children].filter(value => value.style.top === cell.style.top)
        .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
        .map(value => value.innerText.trim());
}"""


def _metric_row(page: Page, metric: str) -> list[str]:
    """The values the compare view shows in a metric's row, left to right (one per run).

    The metrics table is two virtualised grids side by side (names, values), not a <table>, 300 pixels
    high. In MLflow 3.17 they scroll apart: the wheel over the values moves only them, and the names
    grid does not scroll at all, so below the first rows what lines up on screen is not one row (seen
    in the screenshots: test_accuracy beside test_loss's values). So a row is found as the grids define
    it, by its position in the grid; the wheel over the values brings the row into view, as a person
    scrolls, so that it is drawn and on the screenshot.
    """
    label = page.get_by_role("link", name=metric, exact=True)
    label.wait_for()
    top = label.evaluate("label => label.closest('.ReactVirtualized__Grid__innerScrollContainer > div').offsetTop")
    values = page.locator(".ReactVirtualized__Grid").filter(has_not=label).last
    box = values.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, max(0, top - 100))
    page.wait_for_function(f"label => ({ROW_VALUES_SCRIPT})(label).length > 0", arg=label.element_handle())
    return label.evaluate(ROW_VALUES_SCRIPT)


def test_compare_view_shows_each_variant_and_its_test_accuracy(
    stack: Stack, stack_training: StackTraining, tmp_path: Path
) -> None:
    test_accuracy = {run_["info"]["run_name"]: metrics_of(run_)["test_accuracy"] for run_ in experiment_runs(stack)}
    assert sorted(test_accuracy) == sorted(TINY_VARIANTS)
    with signed_in_page(stack, tmp_path, "mlflow_ui") as (sync_api, page, screenshot):
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

    assert sorted(shown) == sorted(TINY_VARIANTS), f"the compare view lists {run_names}"
    for variant, expected in test_accuracy.items():
        assert float(shown[variant]) == pytest.approx(expected, abs=DISPLAY_TOLERANCE), (
            f"{variant}: the compare view shows test_accuracy {shown[variant]}, MLflow's API says {expected}"
        )


def _seconds(duration: str) -> float:
    """MLflow's Duration cell ("5.6s", "1.2min", "850ms") in seconds."""
    found = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h)", duration.strip())
    assert found, f"a Duration cell reads {duration!r}"
    return float(found.group(1)) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[found.group(2)]


def test_runs_list_shows_each_runs_data_and_fit_time_and_the_run_page_its_gallery(
    stack: Stack, stack_training: StackTraining, tmp_path: Path
) -> None:
    """What a new user sees in the runs list: the Datasets column names each run's training data (its
    split, size and DVC md5), and Duration is the fit's time (within 10 %), not the seconds it took to
    log the run afterwards; the run page's Artifacts tab shows the error gallery as a loaded image."""
    runs = experiment_runs(stack)
    assert sorted(run_["info"]["run_name"] for run_ in runs) == sorted(TINY_VARIANTS)
    experiment_id = runs[0]["info"]["experiment_id"]
    with signed_in_page(stack, tmp_path, "mlflow_runs") as (_, page, screenshot):
        page.goto(f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs")
        page.get_by_role("columnheader", name="Duration").first.wait_for()
        cells = {}
        for run_ in runs:
            row = page.locator(f'.ag-center-cols-container [row-id="{run_["info"]["run_id"]}"]')
            cells[run_["info"]["run_name"]] = (row.locator('[col-id="attributes.`Dataset`"]').inner_text(),
                                              row.locator('[col-id="duration"]').inner_text())
        screenshot("1_runs_list")
        champion = next(run_ for run_ in runs if run_["info"]["run_name"] == "relu_layers")
        page.goto(f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs/{champion['info']['run_id']}"
                  "/artifacts/evaluation/error_gallery.png")
        page.wait_for_function("() => [...document.images].some(image => image.complete && image.naturalWidth > 800)")
        loaded = page.evaluate("() => [...document.images].map(image => image.naturalWidth)")
        screenshot("2_error_gallery")
    for run_ in runs:
        name = run_["info"]["run_name"]
        datasets, duration = cells[name]
        logged = {entry["dataset"]["name"]: entry["dataset"]["digest"] for entry in run_["inputs"]["dataset_inputs"]}
        train = next(dataset for dataset in logged if dataset.startswith("train ("))
        assert logged[train] == tags_of(run_)["data_version"][:12]  # the DVC md5 of data/prepared
        assert f"{train} ({logged[train]})" in datasets, (name, datasets)
        fit_seconds = metrics_of(run_)["train_seconds"]
        assert _seconds(duration) == pytest.approx(fit_seconds, rel=0.10), (name, duration, fit_seconds)
    assert max(loaded) > 800, loaded  # the gallery PNG (880 pixels wide), decoded by the browser
