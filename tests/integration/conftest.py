"""The native service stack (scripts/stack_up.sh) and a training flow run on it, as session fixtures.

`stack`: one stack per test session: MLflow with basic auth on PostgreSQL, Prefect server on
PostgreSQL and a process worker, on free ports, with databases and a state directory of its own,
torn down (databases dropped) by scripts/stack_down.sh --purge. It starts only when a test asks.

`stack_training`: the training flow run once on tiny data in a project copy, tracking into the
stack's MLflow as the non-admin pipeline user and recorded by the stack's Prefect server.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests
from psycopg2 import sql

from tests.conftest import make_project

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_UP = REPO_ROOT / "scripts" / "stack_up.sh"
STACK_DOWN = REPO_ROOT / "scripts" / "stack_down.sh"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Password checks hash deliberately slowly; the machine may be busy with other tests.
HTTP_TIMEOUT = 60
# Variables the stack reads; the caller's own values must not leak into the test stack.
STACK_VARIABLE_PREFIXES = ("STACK_", "MLFLOW_", "PREFECT_")
# The non-admin MLflow user the stack creates for the worker (compose's mlflow-init does the same).
TRACKING_USERNAME = "pipeline"
# What the project's params.yaml names (tests/conftest.py's tiny params keep them).
EXPERIMENT_NAME = "cnn-variants"
MODEL_NAME = "mnist-cnn"


@dataclass(frozen=True)
class Stack:
    mlflow_url: str
    prefect_api_url: str
    admin_auth: tuple[str, str]
    tracking_auth: tuple[str, str]
    prefect_auth_string: str
    work_pool: str
    worker_name: str
    state_dir: Path
    artifacts_dir: Path
    databases: dict[str, str]
    env: dict[str, str]

    def mlflow(self, method: str, path: str, auth: tuple[str, str] | None = None, **kwargs) -> requests.Response:
        """A request to MLflow's server, with basic-auth credentials when given."""
        return requests.request(method, self.mlflow_url + path, auth=auth, timeout=HTTP_TIMEOUT, **kwargs)

    def prefect(self, method: str, path: str, auth_string: str | None = None, **kwargs) -> requests.Response:
        """A request to Prefect's API; `auth_string` is the server's "user:password"."""
        headers = kwargs.pop("headers", {})
        if auth_string is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        return requests.request(method, self.prefect_api_url + path, headers=headers, timeout=HTTP_TIMEOUT, **kwargs)

    def client_env(self) -> dict[str, str]:
        """What a pipeline process needs to track into this stack as the non-admin user."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.tracking_auth[0],
            "MLFLOW_TRACKING_PASSWORD": self.tracking_auth[1],
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string,
            "DO_NOT_TRACK": "true",
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can."""
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
    except psycopg2.OperationalError as error:
        return str(error).strip()
    return None


def existing_databases(names: list[str]) -> list[str]:
    with psycopg2.connect(dbname="postgres", **PG) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
        return sorted(row[0] for row in cursor.fetchall())


def drop_databases(names: list[str]) -> None:
    connection = psycopg2.connect(dbname="postgres", **PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    connection.close()


def base_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(STACK_VARIABLE_PREFIXES)}
    # The tools of the interpreter running the tests; no .env of the developer's.
    env.update(STACK_BIN_DIR=str(Path(sys.executable).parent), STACK_ENV_FILE=os.devnull)
    return env


def run_script(script: Path, env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    unreachable = postgres_unreachable()
    if unreachable:
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 as postgres: {unreachable}")
    suffix = uuid.uuid4().hex[:10]
    databases = {
        "STACK_MLFLOW_DB": f"test_stack_{suffix}_mlflow",
        "STACK_MLFLOW_AUTH_DB": f"test_stack_{suffix}_mlflow_auth",
        "STACK_PREFECT_DB": f"test_stack_{suffix}_prefect",
    }
    state_dir = tmp_path_factory.mktemp("stack") / "state"
    # %, # and ; would be mangled by a carelessly written ini file (configparser).
    admin_password = f"{secrets.token_hex(16)}%#;"
    tracking_auth = (TRACKING_USERNAME, secrets.token_hex(16))
    prefect_auth_string = f"prefect:{secrets.token_hex(16)}"
    mlflow_port, prefect_port = free_port(), free_port()
    env = {
        **base_env(),
        **databases,
        "STACK_STATE_DIR": str(state_dir),
        "STACK_PREFECT_UI": "true",  # tests/integration/test_prefect_ui.py opens the training report in it
        "MLFLOW_PORT": str(mlflow_port),
        "PREFECT_PORT": str(prefect_port),
        "MLFLOW_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        "MLFLOW_TRACKING_USERNAME": tracking_auth[0],
        "MLFLOW_TRACKING_PASSWORD": tracking_auth[1],
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth_string,
        "PREFECT_WORK_POOL": f"test-pool-{suffix}",
    }
    started = run_script(STACK_UP, env)
    try:
        if started.returncode != 0:
            pytest.fail(f"stack_up.sh failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        yield Stack(
            mlflow_url=f"http://127.0.0.1:{mlflow_port}",
            prefect_api_url=f"http://127.0.0.1:{prefect_port}/api",
            admin_auth=("admin", admin_password),
            tracking_auth=tracking_auth,
            prefect_auth_string=prefect_auth_string,
            work_pool=env["PREFECT_WORK_POOL"],
            worker_name=f"{env['PREFECT_WORK_POOL']}-worker",
            state_dir=state_dir,
            artifacts_dir=state_dir / "mlartifacts",
            databases=databases,
            env=env,
        )
    finally:
        stopped = run_script(STACK_DOWN, env, "--purge", timeout=180)
        leftover = existing_databases(list(databases.values()))
        drop_databases(leftover)
        assert stopped.returncode == 0, f"stack_down.sh failed:\n{stopped.stdout}\n{stopped.stderr}"
        assert not leftover, f"stack_down.sh --purge left the databases {leftover}"
        assert not state_dir.exists(), "stack_down.sh --purge left the state directory"


@dataclass(frozen=True)
class StackTraining:
    project: Path
    output: str  # what `python -m flows.training` printed
    seconds: float


@pytest.fixture(scope="session")
def stack_training(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> StackTraining:
    """`python -m flows.training` in a fresh project copy, pointed at the stack by its environment alone."""
    return run_training_flow(stack, make_project(tmp_path_factory.mktemp("stack-flow") / "project"))


def run_training_flow(stack: Stack, project: Path) -> StackTraining:
    """`python -m flows.training` in `project`, pointed at the stack by its environment alone."""
    env = {
        **base_env(),  # none of the developer's MLFLOW_* / PREFECT_* settings
        **stack.client_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # No Prefect profile of the developer's, and no lock directory shared with other tests.
        "PREFECT_HOME": str(project.parent / "prefect-home"),
        "PIPELINE_LOCK_DIR": str(project.parent / "locks"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.training", "--root", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"the training flow failed ({result.returncode}) after {seconds:.0f}s:\n{output[-6000:]}")
    print(f"training flow on the stack: {seconds:.0f}s")
    return StackTraining(project=project, output=output, seconds=seconds)


def experiment_runs(stack: Stack) -> list[dict]:
    """The runs of the pipeline's experiment through MLflow's REST API ({info, data} each)."""
    found = stack.mlflow(
        "GET",
        "/api/2.0/mlflow/experiments/get-by-name",
        stack.tracking_auth,
        params={"experiment_name": EXPERIMENT_NAME},
    )
    assert found.status_code == 200, found.text
    experiment_id = found.json()["experiment"]["experiment_id"]
    searched = stack.mlflow(
        "POST", "/api/2.0/mlflow/runs/search", stack.tracking_auth, json={"experiment_ids": [experiment_id]}
    )
    assert searched.status_code == 200, searched.text
    return searched.json().get("runs", [])


def metrics_of(run: dict) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def tags_of(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
