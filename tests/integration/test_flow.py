"""The Prefect flow with Prefect's test harness (a real temporary Prefect API) on tiny data."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.training import IO_RETRIES, training_flow
from pipeline.tracking import check_server
from tests.conftest import TINY_VARIANTS, make_project, run
from tests.reliability.faults import free_port, mlflow_server_command, running, wait_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness() -> None:
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def artifacts_of(flow_run_id: str) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found}


def test_flow_matches_dvc_and_tags_runs(harness: None, tmp_path: Path) -> None:
    import asyncio

    project = make_project(tmp_path / "project")
    state = training_flow(root=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert [row["variant"] for row in result["leaderboard"]] and len(result["leaderboard"]) == len(TINY_VARIANTS)
    flow_run_id = str(state.state_details.flow_run_id)

    # One source of truth: DVC sees the flow's outputs as its own.
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
    assert "Running stage" not in run(["dvc", "repro"], project).stdout

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cnn-variants"], output_format="list")
    assert len(runs) == len(TINY_VARIANTS)
    assert {run_.data.tags["prefect_flow_run_id"] for run_ in runs} == {flow_run_id}
    registered = mlflow.MlflowClient().get_model_version_by_alias("mnist-cnn", "champion")
    assert registered.tags["run_id"] in {run_.info.run_id for run_ in runs}

    artifacts = asyncio.run(artifacts_of(flow_run_id))
    assert {"leaderboard", "training-report"} <= set(artifacts)
    report = artifacts["training-report"].data
    assert "#/experiments/" in report and "## Decision" in report and "file://" not in report
    assert "| added |" in report and "mnist-cnn v1" in report  # the data growth next to the decision
    _champion_gallery_loads_from_an_mlflow_server(project, report, registered)


def _champion_gallery_loads_from_an_mlflow_server(project: Path, report: str, registered: object) -> None:
    """The report shows the champion's error gallery inline, from the MLflow server's artifact URL: a real
    `mlflow server` on this project's store answers that URL with the very PNG the evaluate stage drew."""
    found = re.search(r"!\[error gallery of champion v1\]\((http://[^/]+)(/get-artifact\?[^)]+)\)", report)
    assert found, report
    assert f"run_uuid={registered.run_id}" in found.group(2)
    port = free_port()
    log = project / "mlflow-server.log"
    command = mlflow_server_command(f"sqlite:///{project / 'mlflow.db'}", project / "served", port)
    with running(command, project, log) as server:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, log)
        picture = requests.get(f"http://127.0.0.1:{port}{found.group(2)}", timeout=30)
    assert picture.status_code == 200, picture.text[:500]
    variant = registered.tags["variant"]
    assert picture.content == (project / "reports" / "evaluation" / variant / "error_gallery.png").read_bytes()


def test_transient_io_failure_is_retried(harness: None) -> None:
    """A real outage: the tracking server's port refuses connections until a server starts on it
    after the first attempt; the task with the flow's I/O retry policy fails once, then succeeds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempts: list[float] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    servers: list[http.server.HTTPServer] = []

    def start_after_first_attempt() -> None:
        while not attempts:
            time.sleep(0.01)
        time.sleep(0.5)  # the first attempt has been refused by now (nothing listens yet)
        servers.append(http.server.HTTPServer(("127.0.0.1", port), Health))
        servers[0].serve_forever()

    @task(**IO_RETRIES)
    def reach_tracking_server() -> str:
        attempts.append(time.monotonic())
        check_server(f"http://127.0.0.1:{port}")
        return "reached"

    @flow
    def outage_flow() -> str:
        return reach_tracking_server()

    threading.Thread(target=start_after_first_attempt, daemon=True).start()
    try:
        assert outage_flow() == "reached"
    finally:
        for server in servers:
            server.shutdown()
    assert len(attempts) == 2  # failed once (connection refused), succeeded on the retry


def test_training_error_fails_the_flow_visibly(harness: None, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    # A file where the models/ directory should be: the train task cannot write its outputs.
    (project / "models").write_text("not a directory")
    state = training_flow(root=str(project), variants=["three_conv"], return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="models"):
        state.result()
    # Nothing after training ran: no evaluation, no registration.
    assert not (project / "reports" / "evaluation" / "three_conv").exists()
    assert not (project / "reports" / "registry.json").exists()
