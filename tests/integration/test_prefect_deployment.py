"""prefect.yaml for real: a Prefect server, a process work pool, `prefect deploy`, a worker, a flow run.

One throwaway server per module (its own PREFECT_HOME and SQLite database, on a free loopback port)
and a project copy on tiny data. The deployment is created from the repository's prefect.yaml as
`make prefect-deploy` does; a run is created through the API and executed by
`prefect worker start --run-once`, and the result is checked in Prefect (state, artifacts) and in the
project (registry decision, `dvc status`). Every process started here is stopped, SIGKILL included.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import BIN, REPO, make_project, run

pytestmark = pytest.mark.slow

DEPLOYMENT = "train-cnn-variants/nightly-retrain"
SERVER_START_SECONDS = 180  # a cold start imports the whole server; other tests may share the 2 CPUs
FLOW_RUN_SECONDS = 420
SCHEDULER_SECONDS = 60  # the server schedules a new deployment's runs within seconds
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Deployed:
    """The server, the project copy the deployment points at, and the deployment as the API has it."""

    api_url: str
    env: dict[str, str]  # on top of os.environ, for the CLI and the worker
    project: Path
    logs: Path
    spec: dict[str, Any]  # nightly-retrain as written in prefect.yaml
    deployment: Any  # prefect.client.schemas.responses.DeploymentResponse


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _stop(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left after the grace period.

    The group covers the server's uvicorn and the worker's flow-run processes; descendants that
    left the group (a new session) are collected first and killed too.
    """
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    # A prefect 3.8.8 worker answers SIGTERM by sending itself SIGINT: if it was started with SIGINT
    # ignored (as by `cmd &` in a script) it keeps polling. Hence the SIGKILL after the grace period.
    _, alive = psutil.wait_procs(family, timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def _started(command: list[str], env: dict[str, str], log: Path, cwd: Path,
             grace_seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """A background process, leader of its own process group, stopped on exit whatever happens."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            yield process
        finally:
            _stop(process, grace_seconds)


def _wait_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited ({server.returncode}) during start-up:\n{_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            if response.status == 200:
                return
        time.sleep(1)
    pytest.fail(f"prefect server did not answer {api_url}/health within {SERVER_START_SECONDS}s:\n{_tail(log)}")


def _in_api(api_url: str, work: Any) -> Any:
    """Run `await work(client)` with a Prefect client of the server at `api_url`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def call() -> Any:
        async with get_client() as client:
            return await work(client)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(call())


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """A server with the process pool and nightly-retrain deployed from a project copy, as
    `make prefect-server prefect-pool prefect-deploy` would leave it."""
    spec = next(item for item in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                if item["name"] == "nightly-retrain")
    base = tmp_path_factory.mktemp("prefect-deployment")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key in list(os.environ):  # nothing of the developer's Prefect configuration
            if key.startswith("PREFECT_"):
                monkeypatch.delenv(key)
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PREFECT_HOME": str(base / "prefect-home"),
               "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
        server_env = {**os.environ, **env,
                      "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{base / 'prefect.db'}",
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "PREFECT_SERVER_UI_ENABLED": "false"}  # the UI is not exercised; skipping it saves seconds
        client_env = {**env, "PREFECT_API_URL": api_url}
        project = make_project(base / "project")
        with _started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                      server_env, base / "server.log", base, grace_seconds=20) as server:
            _wait_healthy(api_url, server, base / "server.log")
            # What `make prefect-pool prefect-deploy` runs, in the project copy.
            pool = spec["work_pool"]["name"]
            run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], project,
                env=client_env, timeout=180)
            run([str(BIN / "prefect"), "deploy", "--name", "nightly-retrain", "--no-prompt"], project,
                env=client_env, timeout=300)
            deployment = _in_api(api_url, lambda client: client.read_deployment_by_name(DEPLOYMENT))
            yield Deployed(api_url, client_env, project, base, spec, deployment)


def test_server_serves_with_the_pinned_fastapi(deployed: Deployed) -> None:
    """The health check passed; and the fastapi it passed with is the one pyproject.toml pins
    (prefect 3.8.8's server fails to import with fastapi >= 0.155)."""
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    fastapi_pin = next(pin for pin in pins if pin.startswith("fastapi=="))
    assert importlib.metadata.version("fastapi") == fastapi_pin.split("==")[1]


def test_prefect_yaml_deploys_nightly_retrain(deployed: Deployed) -> None:
    deployment, spec = deployed.deployment, deployed.spec
    assert deployment.work_pool_name == spec["work_pool"]["name"]
    assert deployment.entrypoint == spec["entrypoint"]
    assert deployment.parameters == spec["parameters"]
    # The build step recorded the directory `prefect deploy` ran in, for the pull step.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(deployed.project)}}]
    [schedule] = deployment.schedules
    expected = spec["schedules"][0]
    assert (schedule.active, schedule.schedule.cron, schedule.schedule.timezone) == (
        True, expected["cron"], expected["timezone"])
    assert not run(["git", "status", "--porcelain"], deployed.project).stdout.strip(), "deploy changed the project"


def test_nightly_retrain_runs_on_a_process_worker(deployed: Deployed) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    api_url = deployed.api_url
    flow_run = _in_api(api_url, lambda client: client.create_flow_run_from_deployment(deployed.deployment.id))
    worker_log = deployed.logs / "worker.log"
    # os.environ now: conftest's per-test settings (lock directory, no MLFLOW_TRACKING_URI) reach the run.
    with _started([str(BIN / "prefect"), "worker", "start", "--pool", deployed.deployment.work_pool_name,
                   "--type", "process", "--run-once", "--limit", "1"],
                  {**os.environ, **deployed.env}, worker_log, deployed.logs, grace_seconds=10) as worker:
        deadline = time.monotonic() + FLOW_RUN_SECONDS
        state = None
        while time.monotonic() < deadline:
            state = _in_api(api_url, lambda client: client.read_flow_run(flow_run.id)).state
            if state is not None and state.type.value in FINAL_STATES:
                break
            time.sleep(3)
        assert state is not None and state.type.value == "COMPLETED", (
            f"flow run ended {state and state.type.value}: {state and state.message}\n{_tail(worker_log)}")
        # --run-once: the worker exits by itself once its run is over.
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=60)

    artifacts = _in_api(api_url, lambda client: client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))))
    assert {"leaderboard", "training-report"} <= {artifact.key for artifact in artifacts}
    # The run worked in the project copy (the pull step's directory) and recorded its outputs in DVC.
    assert (deployed.project / "reports" / "registry.json").is_file()
    assert run(["dvc", "status"], deployed.project).stdout.strip() == "Data and pipelines are up to date."


def test_cron_schedule_creates_the_nightly_runs(deployed: Deployed) -> None:
    """The server's scheduler turns the cron schedule into scheduled flow runs at 03:00 UTC.

    This fails with SQLAlchemy >= 2.1 (prefect 3.8.8's scheduler: "Can't evaluate bulk DML
    statement"), which is why requirements.lock pins SQLAlchemy 2.0.58.
    """
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    def scheduled(client: Any) -> Any:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployed.deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))

    deadline = time.monotonic() + SCHEDULER_SECONDS
    runs = _in_api(deployed.api_url, scheduled)
    while not runs and time.monotonic() < deadline:
        time.sleep(2)
        runs = _in_api(deployed.api_url, scheduled)
    assert runs, f"no scheduled run within {SCHEDULER_SECONDS}s:\n{_tail(deployed.logs / 'server.log', 30)}"
    starts = sorted(run_.expected_start_time.astimezone(UTC) for run_ in runs)
    assert all((start.hour, start.minute) == (3, 0) for start in starts)
    assert starts[0] - datetime.now(UTC) <= timedelta(days=1)


def _emit_data_changed(api_url: str, project: Path) -> None:
    """What flows/watch.py emits when data.path changed, sent to the server's event endpoint."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    from flows.watch import DATA_CHANGED, resource_id

    async def send() -> None:
        async with PrefectEventsClient(api_url) as events:
            await events.emit(Event(event=DATA_CHANGED, resource={"prefect.resource.id": resource_id(project)}))

    asyncio.run(send())


def test_data_changed_event_triggers_one_retrain_at_a_time(deployed: Deployed) -> None:
    """The data-changed event creates a nightly-retrain run (the trigger of prefect.yaml); the same event
    again while that run is RUNNING creates a second run that waits (concurrency limit 1) and runs after it.

    Runs last in this module: it makes the project stale (another seed) so that the first run trains.
    """
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def runs(client: Any) -> Any:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
            any_=[deployed.deployment.id])))

    before = {run_.id for run_ in _in_api(deployed.api_url, runs)}
    params = yaml.safe_load((deployed.project / "params.yaml").read_text())
    params["seed"] += 1  # everything is stale: the first triggered run trains for a while
    (deployed.project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    worker_log = deployed.logs / "trigger-worker.log"
    with _started([str(BIN / "prefect"), "worker", "start", "--pool", deployed.deployment.work_pool_name,
                   "--type", "process"], {**os.environ, **deployed.env}, worker_log, deployed.logs,
                  grace_seconds=10):
        _emit_data_changed(deployed.api_url, deployed.project)
        deadline = time.monotonic() + FLOW_RUN_SECONDS
        first = None
        while first is None or first.state.type.value != "RUNNING":
            assert time.monotonic() < deadline, f"no triggered run started:\n{_tail(worker_log)}"
            time.sleep(1)
            created = [run_ for run_ in _in_api(deployed.api_url, runs) if run_.id not in before]
            first = created[0] if created else None
            assert first is None or first.state.type.value not in FINAL_STATES, (
                f"the triggered run ended {first.state.type.value} before a second event:\n{_tail(worker_log)}")
        _emit_data_changed(deployed.api_url, deployed.project)
        most_running, states = 0, {}
        while True:
            assert time.monotonic() < deadline, f"triggered runs did not finish: {states}\n{_tail(worker_log)}"
            created = [run_ for run_ in _in_api(deployed.api_url, runs) if run_.id not in before]
            states = {run_.id: run_.state.type.value for run_ in created}
            most_running = max(most_running, list(states.values()).count("RUNNING"))
            if len(created) == 2 and all(state in FINAL_STATES for state in states.values()):
                break
            time.sleep(1)
    assert most_running == 1, states
    assert list(states.values()) == ["COMPLETED", "COMPLETED"], f"{states}\n{_tail(worker_log)}"
    second = max(created, key=lambda run_: run_.start_time)
    assert second.start_time >= min(created, key=lambda run_: run_.start_time).end_time  # it waited
