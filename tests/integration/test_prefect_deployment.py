"""prefect.yaml for real: a Prefect server, a process work pool, `prefect deploy`, a worker, a flow run.

One throwaway server (its own PREFECT_HOME and SQLite database, on a free loopback port) and a
project copy on tiny data. The deployment is created from the repository's prefect.yaml exactly as
`make prefect-deploy` does, its run is created through the API and executed by
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
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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
    # An idle prefect 3.8.8 worker turns SIGTERM into SIGINT and keeps polling: hence the SIGKILL.
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


@pytest.fixture
def prefect_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the server, CLI and worker: nothing of the developer's Prefect configuration."""
    for key in list(os.environ):
        if key.startswith("PREFECT_"):
            monkeypatch.delenv(key)
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_nightly_retrain_deployment_runs_on_a_process_worker(tmp_path: Path, prefect_env: dict[str, str]) -> None:
    spec = next(item for item in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                if item["name"] == "nightly-retrain")
    pool = spec["work_pool"]["name"]
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = {**prefect_env,
                  "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_SERVER_UI_ENABLED": "false"}  # the UI is not exercised; skipping it saves seconds
    client_env = {**prefect_env, "PREFECT_API_URL": api_url}
    project = make_project(tmp_path / "project")

    with _started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  server_env, tmp_path / "server.log", tmp_path, grace_seconds=20) as server:
        # The server imports and serves with the fastapi pinned in pyproject.toml (3.8.8's server
        # fails to import with fastapi >= 0.155).
        _wait_healthy(api_url, server, tmp_path / "server.log")
        pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        fastapi_pin = next(pin for pin in pins if pin.startswith("fastapi=="))
        assert importlib.metadata.version("fastapi") == fastapi_pin.split("==")[1]

        # What `make prefect-pool prefect-deploy` runs, in the project copy.
        run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], project, env=client_env,
            timeout=180)
        run([str(BIN / "prefect"), "deploy", "--name", "nightly-retrain", "--no-prompt"], project, env=client_env,
            timeout=300)
        assert not run(["git", "status", "--porcelain"], project).stdout.strip(), "deploy changed the project"

        deployment = _in_api(api_url, lambda client: client.read_deployment_by_name(DEPLOYMENT))
        assert deployment.work_pool_name == pool
        assert deployment.parameters == spec["parameters"]
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
        [schedule] = deployment.schedules
        expected = spec["schedules"][0]
        assert (schedule.active, schedule.schedule.cron, schedule.schedule.timezone) == (
            True, expected["cron"], expected["timezone"])

        flow_run = _in_api(api_url, lambda client: client.create_flow_run_from_deployment(deployment.id))
        worker_log = tmp_path / "worker.log"
        with _started([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                       "--run-once", "--limit", "1"], client_env, worker_log, tmp_path, grace_seconds=10) as worker:
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

        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = _in_api(api_url, lambda client: client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))))
        assert {"leaderboard", "training-report"} <= {artifact.key for artifact in artifacts}

    # The run worked in the project copy (the pull step's directory) and recorded its outputs in DVC.
    assert (project / "reports" / "registry.json").is_file()
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
