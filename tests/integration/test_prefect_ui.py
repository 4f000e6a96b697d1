"""The training report in the stack's Prefect UI, in a real browser: the pictures a person sees there.

Two training flows in a project of their own (its own experiment and registered model, so the other
stack tests still see one run per variant): the first makes a champion, the second (two epochs
instead of one) a challenger that the gate compares with it. The second flow's training report must
show, inline, the champion's error gallery and the gallery of the test images the two disagree on:
images the browser loads from the MLflow server's artifact URLs (a `file://` link opens nowhere).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import make_project, run, tiny_params
from tests.integration.browser import CHROMIUM, signed_in_page
from tests.integration.conftest import HTTP_TIMEOUT, Stack, run_training_flow

pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)"),
]
MODEL_NAME = "mnist-cnn-report"


@pytest.fixture(scope="module")
def second_report(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Prefect artifact of the second flow's training report (a challenger gated against a champion)."""
    params = tiny_params(("three_conv",))
    params["mlflow"]["experiment_name"] = "cnn-variants-report"
    params["register"].update(model_name=MODEL_NAME, min_test_accuracy=0.0)  # the McNemar part must run
    project = make_project(tmp_path_factory.mktemp("prefect-ui") / "project", params)
    run_training_flow(stack, project)
    params["train"]["epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "two epochs"], project)
    run_training_flow(stack, project)
    auth = "Basic " + base64.b64encode(stack.prefect_auth_string.encode()).decode()
    found = requests.post(f"{stack.prefect_api_url}/artifacts/filter", headers={"Authorization": auth},
                          json={"artifacts": {"key": {"any_": ["training-report"]}}}, timeout=HTTP_TIMEOUT)
    assert found.status_code == 200, found.text
    reports = [artifact for artifact in found.json() if f"{MODEL_NAME} v2" in artifact["data"]]
    assert len(reports) == 1, [artifact["data"][:300] for artifact in found.json()]
    return reports[0]


def test_the_report_holds_both_galleries_as_mlflow_artifact_urls(stack: Stack, second_report: dict) -> None:
    report = second_report["data"]
    images = dict(re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", report))
    champion = re.search(r"\*\*mnist-cnn-report v2 \(three_conv\): (promoted to champion|stays challenger)", report)
    assert champion, report
    expected = "error gallery of champion v" + ("2" if champion.group(1) == "promoted to champion" else "1")
    assert set(images) == {expected, "disagreement gallery"}, report
    assert all(url.startswith(f"{stack.mlflow_url}/get-artifact?") for url in images.values()), images
    assert "Challenger right, champion wrong: **" in report and "file://" not in report
    for url in images.values():  # what the browser will ask the MLflow server for
        answer = requests.get(url, auth=stack.tracking_auth, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG"), (url, answer.status_code)


def test_the_artifact_page_shows_both_galleries(stack: Stack, second_report: dict, tmp_path: Path) -> None:
    """Sign in to the Prefect UI with the server's auth string, open the artifact, and read what the
    browser decoded: both images, at their full width. The screenshot is tests/artifacts/prefect_ui_*."""
    with signed_in_page(stack, tmp_path, "prefect_ui") as (_, page, screenshot):
        ui = stack.prefect_api_url.removesuffix("/api")
        page.goto(f"{ui}/artifacts/artifact/{second_report['id']}")
        page.wait_for_url(re.compile(r"/login"))
        page.locator("input").first.fill(stack.prefect_auth_string)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/artifacts/artifact/"))
        page.get_by_role("heading", name="Training report").wait_for()
        script = """alts => alts.every(alt => [...document.images].some(
            image => image.alt === alt && image.complete && image.naturalWidth > 0))"""
        alts = re.findall(r"!\[([^\]]+)\]", second_report["data"])
        page.wait_for_function(script, arg=alts)
        widths = page.evaluate("() => Object.fromEntries([...document.images].map(i => [i.alt, i.naturalWidth]))")
        page.get_by_alt_text("disagreement gallery").scroll_into_view_if_needed()
        screenshot("training_report")
    assert len(alts) == 2 and all(widths[alt] > 800 for alt in alts), widths
