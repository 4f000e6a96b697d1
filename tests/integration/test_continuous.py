"""Continuous training, day by day (the story of `make demo-continuous` with tiny sizes), on a real
DVC repository and Prefect's test harness: new images are versioned and retrained on, a day without
new data changes nothing, a batch with a corrupt image fails naming it and replaces nothing, and the
fixed batch proceeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mlflow
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.demo import CORRUPT_NAME, DEMO_PARAMS, parse_days, run_demo
from pipeline.lineage import file_sha256
from tests.conftest import run

pytestmark = pytest.mark.slow

TINY = {**DEMO_PARAMS, "train": {"epochs": 1, "batch_size": 64, "lr_schedule": "constant"},
        "register": {"min_test_accuracy": 0.2}, "variants": ["three_conv"]}


async def _reports() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
            "training-report"])), sort=ArtifactSort.CREATED_DESC)
    return [artifact.data for artifact in reversed(found)]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five days: 400 images, +300, nothing, +300 with a corrupt PNG, the corrupt PNG removed. The models'
    files and MLflow run count are noted after each day (the demo's run_day is wrapped for it)."""
    import flows.demo as demo

    project = tmp_path_factory.mktemp("continuous") / "project"
    notes: list[dict] = []
    original = demo.run_day

    def noted(root: Path, label: str, arrivals: dict) -> dict:
        record = original(root, label, arrivals)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        models = {str(path.relative_to(root)): file_sha256(path) for path in sorted((root / "models").rglob("*"))
                  if path.is_file()}
        champion = mlflow.MlflowClient().get_model_version_by_alias("mnist-cnn", "champion").version \
            if record.get("champion") else None
        notes.append({"runs": len(mlflow.search_runs(experiment_names=["cnn-variants"], output_format="list")),
                      "models": models, "champion": champion})
        return record

    demo.run_day = noted
    try:
        with prefect_test_harness(server_startup_timeout=180):
            entries = run_demo(project, parse_days("400,300,0,300!,fix"), TINY)
            reports = asyncio.run(_reports())
    finally:
        demo.run_day = original
    return {"project": project, "history": entries, "notes": notes, "reports": reports}


def test_each_day_is_recorded_with_its_decision(story: dict) -> None:
    assert [entry["label"] for entry in story["history"]] == [f"day {number}" for number in range(1, 6)]
    decisions = [entry["decision"] for entry in story["history"]]
    assert decisions[0] in ("promoted", "kept") and decisions[1] in ("promoted", "kept")
    assert decisions[2:4] == ["no new data", "failed"] and decisions[4] in ("promoted", "kept")
    sizes = [sum(entry["images"].values()) for entry in story["history"]]
    assert sizes[0] < sizes[1] == sizes[2] == sizes[3] < sizes[4]


def test_new_images_make_a_new_data_version_and_a_commit(story: dict) -> None:
    versions = [entry["data_version"] for entry in story["history"]]
    assert versions[0] != versions[1] == versions[2] == versions[3] != versions[4]
    log = run(["git", "log", "--format=%s"], story["project"]).stdout.splitlines()
    assert [line for line in log if line.startswith("retrain: data ")] == [
        f"retrain: data {versions[index]}" for index in (4, 1, 0)]
    assert run(["git", "status", "--porcelain", "--", "dvc.lock", "data/source"], story["project"]).stdout == ""


def test_a_day_without_new_data_trains_nothing_and_says_so(story: dict) -> None:
    before, after = story["notes"][1], story["notes"][2]
    assert after["runs"] == before["runs"] and after["models"] == before["models"]
    assert story["history"][2]["reason"].startswith("no new data since ")
    assert f"champion v{before['champion']} stays" in story["reports"][2]


def test_a_corrupt_image_fails_the_day_and_replaces_nothing(story: dict) -> None:
    day2, failed = story["notes"][1], story["notes"][3]
    assert failed["models"] == day2["models"] and failed["champion"] == day2["champion"]
    assert CORRUPT_NAME in story["history"][3]["reason"]
    assert CORRUPT_NAME in story["reports"][3] and "Nothing was replaced" in story["reports"][3]


def test_the_fixed_batch_proceeds_and_the_report_shows_the_growth(story: dict) -> None:
    assert story["notes"][4]["runs"] > story["notes"][3]["runs"]
    report = story["reports"][4]
    assert "| before |" in report and "| after |" in report and "| added |" in report
    assert "## Decision" in report
