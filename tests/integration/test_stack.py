"""The native service stack (scripts/stack_up.sh) end to end, on loopback.

One stack per test session: MLflow with basic auth on PostgreSQL, Prefect server on
PostgreSQL and a process worker, on free ports, with databases and a state directory of
its own, torn down (databases dropped) by scripts/stack_down.sh --purge.
"""

import base64
import http.client
import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests
from psycopg2 import sql

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_UP = REPO_ROOT / "scripts" / "stack_up.sh"
STACK_DOWN = REPO_ROOT / "scripts" / "stack_down.sh"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Password checks hash deliberately slowly; the machine may be busy with other tests.
HTTP_TIMEOUT = 60
# Variables the stack reads; the caller's own values must not leak into the test stack.
STACK_VARIABLE_PREFIXES = ("STACK_", "MLFLOW_", "PREFECT_")


@dataclass(frozen=True)
class Stack:
    mlflow_url: str
    prefect_api_url: str
    admin_auth: tuple[str, str]
    prefect_auth_string: str
    work_pool: str
    worker_name: str
    state_dir: Path
    artifacts_dir: Path
    databases: dict[str, str]
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_reachable() -> str | None:
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
    except psycopg2.OperationalError as error:
        return str(error).strip()
    return None


def _existing_databases(names: list[str]) -> list[str]:
    with psycopg2.connect(dbname="postgres", **PG) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
        return sorted(row[0] for row in cursor.fetchall())


def _drop_databases(names: list[str]) -> None:
    connection = psycopg2.connect(dbname="postgres", **PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    connection.close()


def _base_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(STACK_VARIABLE_PREFIXES)}
    # The tools of the interpreter running the tests; no .env of the developer's.
    env.update(STACK_BIN_DIR=str(Path(sys.executable).parent), STACK_ENV_FILE=os.devnull)
    return env


def _run_script(script: Path, env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    unreachable = _postgres_reachable()
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
    prefect_auth_string = f"prefect:{secrets.token_hex(16)}"
    mlflow_port, prefect_port = _free_port(), _free_port()
    env = {
        **_base_env(),
        **databases,
        "STACK_STATE_DIR": str(state_dir),
        "STACK_PREFECT_UI": "false",  # not exercised here; skipping its static build saves seconds
        "MLFLOW_PORT": str(mlflow_port),
        "PREFECT_PORT": str(prefect_port),
        "MLFLOW_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth_string,
        "PREFECT_WORK_POOL": f"test-pool-{suffix}",
    }
    started = _run_script(STACK_UP, env)
    try:
        if started.returncode != 0:
            pytest.fail(f"stack_up.sh failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
        yield Stack(
            mlflow_url=f"http://127.0.0.1:{mlflow_port}",
            prefect_api_url=f"http://127.0.0.1:{prefect_port}/api",
            admin_auth=("admin", admin_password),
            prefect_auth_string=prefect_auth_string,
            work_pool=env["PREFECT_WORK_POOL"],
            worker_name=f"{env['PREFECT_WORK_POOL']}-worker",
            state_dir=state_dir,
            artifacts_dir=state_dir / "mlartifacts",
            databases=databases,
            env=env,
        )
    finally:
        stopped = _run_script(STACK_DOWN, env, "--purge", timeout=180)
        leftover = _existing_databases(list(databases.values()))
        _drop_databases(leftover)
        assert stopped.returncode == 0, f"stack_down.sh failed:\n{stopped.stdout}\n{stopped.stderr}"
        assert not leftover, f"stack_down.sh --purge left the databases {leftover}"
        assert not state_dir.exists(), "stack_down.sh --purge left the state directory"


def test_stack_up_again_leaves_the_running_stack_alone(stack: Stack) -> None:
    pids_before = {path.name: path.read_text() for path in (stack.state_dir / "pids").iterdir()}
    again = _run_script(STACK_UP, stack.env, timeout=180)
    assert again.returncode == 0, again.stderr
    for service in ("mlflow", "prefect-server", "prefect-worker"):
        assert f"{service} already running" in again.stdout
    assert {path.name: path.read_text() for path in (stack.state_dir / "pids").iterdir()} == pids_before


# --- MLflow ------------------------------------------------------------------------------


def _mlflow(stack: Stack, method: str, path: str, auth: tuple[str, str] | None = None, **kwargs) -> requests.Response:
    return requests.request(method, stack.mlflow_url + path, auth=auth, timeout=HTTP_TIMEOUT, **kwargs)


def _raw_get(stack: Stack, target: str, auth: tuple[str, str]) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (requests would normalise `..`)."""
    host, port = stack.mlflow_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
    token = base64.b64encode(":".join(auth).encode()).decode()
    connection.request("GET", target, headers={"Authorization": f"Basic {token}"})
    response = connection.getresponse()
    status, body = response.status, response.read()
    connection.close()
    return status, body


def test_mlflow_health_needs_no_credentials(stack: Stack) -> None:
    assert _mlflow(stack, "GET", "/health").status_code == 200


def test_mlflow_api_requires_the_right_credentials(stack: Stack) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _mlflow(stack, "GET", path).status_code == 401
    assert _mlflow(stack, "GET", path, auth=("admin", "not-the-password-0")).status_code == 401
    assert _mlflow(stack, "GET", path, auth=stack.admin_auth).status_code == 200


def test_read_only_user_cannot_create_runs(stack: Stack) -> None:
    experiment = _mlflow(
        stack, "POST", "/api/2.0/mlflow/experiments/create", stack.admin_auth, json={"name": f"ro-{uuid.uuid4().hex}"}
    )
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    reader = (f"reader-{uuid.uuid4().hex[:8]}", secrets.token_hex(12))
    created = _mlflow(
        stack,
        "POST",
        "/api/2.0/mlflow/users/create",
        stack.admin_auth,
        json={"username": reader[0], "password": reader[1]},
    )
    assert created.status_code == 200, created.text
    # MLflow 3.17 grants per-user permissions through the unified v3 API.
    granted = _mlflow(
        stack,
        "POST",
        "/api/3.0/mlflow/users/permissions/grant",
        stack.admin_auth,
        json={"username": reader[0], "resource_type": "experiment", "resource_id": experiment_id, "permission": "READ"},
    )
    assert granted.status_code == 200, granted.text

    read = _mlflow(stack, "GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", reader)
    assert read.status_code == 200, read.text
    run = _mlflow(stack, "POST", "/api/2.0/mlflow/runs/create", reader, json={"experiment_id": experiment_id})
    assert run.status_code == 403, run.text
    new_user = _mlflow(
        stack, "POST", "/api/2.0/mlflow/users/create", reader, json={"username": "mallory", "password": "x" * 16}
    )
    assert new_user.status_code == 403, "a non-admin could create users"


def test_foreign_host_header_is_rejected(stack: Stack) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    response = _mlflow(stack, "GET", path, stack.admin_auth, headers={"Host": "attacker.example"})
    assert 400 <= response.status_code < 500
    assert response.status_code != 401, "rejected for credentials, not for the Host header"


def test_foreign_origin_cannot_change_state(stack: Stack) -> None:
    name = f"cors-{uuid.uuid4().hex}"
    response = _mlflow(
        stack,
        "POST",
        "/api/2.0/mlflow/experiments/create",
        stack.admin_auth,
        json={"name": name},
        headers={"Origin": "https://attacker.example"},
    )
    assert 400 <= response.status_code < 500
    lookup = _mlflow(
        stack, "GET", "/api/2.0/mlflow/experiments/get-by-name", stack.admin_auth, params={"experiment_name": name}
    )
    assert lookup.status_code == 404, "the cross-origin request created the experiment"


@pytest.mark.parametrize(
    "target",
    [
        "/api/2.0/mlflow-artifacts/artifacts/../secret.txt",
        "/api/2.0/mlflow-artifacts/artifacts/../../../../../../etc/passwd",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e%2fsecret.txt",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/secret.txt",
        "/api/2.0/mlflow-artifacts/artifacts/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/api/2.0/mlflow-artifacts/artifacts/a%23/../../secret.txt",
        "/api/2.0/mlflow-artifacts/artifacts/a#/../../secret.txt",
        "/api/2.0/mlflow-artifacts/artifacts?path=..",
        "/api/2.0/mlflow-artifacts/artifacts?path=%2e%2e%2f",
        "/get-artifact?path=../../secret.txt&run_uuid=0",
        "/get-artifact?path=%2e%2e%2f%2e%2e%2fsecret.txt&run_uuid=0",
    ],
)
def test_artifact_path_traversal_is_refused(stack: Stack, target: str) -> None:
    # A file next to the artifacts directory, which no artifact path may reach.
    sentinel = stack.state_dir / "secret.txt"
    sentinel_text = f"sentinel-{uuid.uuid4().hex}"
    sentinel.write_text(sentinel_text)
    status, body = _raw_get(stack, target, stack.admin_auth)
    assert 400 <= status < 500, f"{target} answered {status}"
    assert sentinel_text.encode() not in body
    assert b"root:x:0:0" not in body


def test_artifact_upload_cannot_escape_the_artifacts_directory(stack: Stack) -> None:
    for target in ("..%2fescaped.txt", "%2e%2e%2fescaped.txt"):
        response = _mlflow(
            stack, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{target}", stack.admin_auth, data=b"payload"
        )
        assert 400 <= response.status_code < 500, f"{target} answered {response.status_code}"
    assert not (stack.state_dir / "escaped.txt").exists()


def test_logged_run_lands_in_postgres_and_its_artifact_in_the_artifacts_dir(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin_auth[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin_auth[1])
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    experiment_id = client.create_experiment(f"stack-{uuid.uuid4().hex}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "val_accuracy", 0.875, step=3)
    artifact = tmp_path / "summary.txt"
    artifact.write_text("proxied artifact")
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)

    with (
        psycopg2.connect(dbname=stack.databases["STACK_MLFLOW_DB"], **PG) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT status, experiment_id FROM runs WHERE run_uuid = %s", (run_id,))
        assert cursor.fetchone() == ("FINISHED", int(experiment_id))
        cursor.execute("SELECT value, step FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy'", (run_id,))
        assert cursor.fetchall() == [(0.875, 3)]

    stored = list(stack.artifacts_dir.rglob("summary.txt"))
    assert [path.read_text() for path in stored] == ["proxied artifact"]
    assert run_id in stored[0].parts


# --- Prefect -----------------------------------------------------------------------------


def _prefect(stack: Stack, method: str, path: str, auth_string: str | None = None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if auth_string is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    return requests.request(method, stack.prefect_api_url + path, headers=headers, timeout=HTTP_TIMEOUT, **kwargs)


def test_prefect_health_is_public_and_the_api_needs_the_auth_string(stack: Stack) -> None:
    assert _prefect(stack, "GET", "/health").status_code == 200
    assert _prefect(stack, "POST", "/flows/filter", json={}).status_code == 401
    assert _prefect(stack, "POST", "/flows/filter", "prefect:wrong-password", json={}).status_code == 401
    assert _prefect(stack, "POST", "/flows/filter", stack.prefect_auth_string, json={}).status_code == 200


def test_process_work_pool_has_a_polling_worker(stack: Stack) -> None:
    pool = _prefect(stack, "GET", f"/work_pools/{stack.work_pool}", stack.prefect_auth_string)
    assert pool.status_code == 200, pool.text
    assert pool.json()["type"] == "process"
    workers = _prefect(
        stack, "POST", f"/work_pools/{stack.work_pool}/workers/filter", stack.prefect_auth_string, json={}
    )
    assert workers.status_code == 200, workers.text
    ours = [worker for worker in workers.json() if worker["name"] == stack.worker_name]
    assert ours, f"no worker {stack.worker_name} in {workers.json()}"
    assert ours[0]["status"] == "ONLINE"


# --- refusing unsafe configuration (no stack needed) ---------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (None, "MLFLOW_ADMIN_PASSWORD is not set"),
        ("", "MLFLOW_ADMIN_PASSWORD is not set"),
        ("password1234", "password1234"),
        ("short-pw", "too short"),
        ("CHANGE_ME_mlflow_admin_password", "placeholder"),
    ],
)
def test_stack_up_refuses_a_missing_default_or_weak_admin_password(
    tmp_path: Path, password: str | None, message: str
) -> None:
    env = {
        **_base_env(),
        "STACK_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        "PREFECT_SERVER_API_AUTH_STRING": f"prefect:{secrets.token_hex(16)}",
        # A PostgreSQL port nothing listens on: a script that failed to refuse would
        # stop there instead of creating databases.
        "STACK_PG_PORT": str(_free_port()),
        "MLFLOW_PORT": str(_free_port()),
        "PREFECT_PORT": str(_free_port()),
    }
    if password is not None:
        env["MLFLOW_ADMIN_PASSWORD"] = password
    result = _run_script(STACK_UP, env, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "state").exists(), "stack_up.sh touched the state directory before refusing"
