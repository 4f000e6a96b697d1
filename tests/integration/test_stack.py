"""The native service stack (scripts/stack_up.sh) end to end, on loopback.

The `stack` fixture (tests/integration/conftest.py) starts one stack per test session: MLflow with
basic auth on PostgreSQL, Prefect server on PostgreSQL and a process worker, on free ports, with
databases and a state directory of its own, torn down by scripts/stack_down.sh --purge.
"""

import base64
import http.client
import secrets
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.integration.conftest import HTTP_TIMEOUT, PG, STACK_UP, Stack, base_env, free_port, run_script

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_stack_up_again_leaves_the_running_stack_alone(stack: Stack) -> None:
    pids_before = {path.name: path.read_text() for path in (stack.state_dir / "pids").iterdir()}
    again = run_script(STACK_UP, stack.env, timeout=180)
    assert again.returncode == 0, again.stderr
    for service in ("mlflow", "prefect-server", "prefect-worker"):
        assert f"{service} already running" in again.stdout
    assert {path.name: path.read_text() for path in (stack.state_dir / "pids").iterdir()} == pids_before
    # The zombie-run automation: installed by the first start, updated (not duplicated) by the second.
    assert "automation crash-zombie-flow-runs: updated" in again.stdout
    found = stack.prefect("POST", "/automations/filter", stack.prefect_auth_string, json={})
    assert found.status_code == 200, found.text
    assert [automation["name"] for automation in found.json()].count("crash-zombie-flow-runs") == 1


# --- MLflow ------------------------------------------------------------------------------


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
    assert stack.mlflow("GET", "/health").status_code == 200


def test_mlflow_api_requires_the_right_credentials(stack: Stack) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert stack.mlflow("GET", path).status_code == 401
    assert stack.mlflow("GET", path, auth=("admin", "not-the-password-0")).status_code == 401
    assert stack.mlflow("GET", path, auth=stack.admin_auth).status_code == 200


def test_read_only_user_cannot_create_runs(stack: Stack) -> None:
    experiment = stack.mlflow(
        "POST", "/api/2.0/mlflow/experiments/create", stack.admin_auth, json={"name": f"ro-{uuid.uuid4().hex}"}
    )
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    reader = (f"reader-{uuid.uuid4().hex[:8]}", secrets.token_hex(12))
    created = stack.mlflow(
        "POST",
        "/api/2.0/mlflow/users/create",
        stack.admin_auth,
        json={"username": reader[0], "password": reader[1]},
    )
    assert created.status_code == 200, created.text
    # MLflow 3.17 grants per-user permissions through the unified v3 API.
    granted = stack.mlflow(
        "POST",
        "/api/3.0/mlflow/users/permissions/grant",
        stack.admin_auth,
        json={"username": reader[0], "resource_type": "experiment", "resource_id": experiment_id, "permission": "READ"},
    )
    assert granted.status_code == 200, granted.text

    read = stack.mlflow("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", reader)
    assert read.status_code == 200, read.text
    run = stack.mlflow("POST", "/api/2.0/mlflow/runs/create", reader, json={"experiment_id": experiment_id})
    assert run.status_code == 403, run.text
    new_user = stack.mlflow(
        "POST", "/api/2.0/mlflow/users/create", reader, json={"username": "mallory", "password": "x" * 16}
    )
    assert new_user.status_code == 403, "a non-admin could create users"


def test_foreign_host_header_is_rejected(stack: Stack) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    response = stack.mlflow("GET", path, stack.admin_auth, headers={"Host": "attacker.example"})
    assert 400 <= response.status_code < 500
    assert response.status_code != 401, "rejected for credentials, not for the Host header"


def test_foreign_origin_cannot_change_state(stack: Stack) -> None:
    name = f"cors-{uuid.uuid4().hex}"
    response = stack.mlflow(
        "POST",
        "/api/2.0/mlflow/experiments/create",
        stack.admin_auth,
        json={"name": name},
        headers={"Origin": "https://attacker.example"},
    )
    assert 400 <= response.status_code < 500
    lookup = stack.mlflow(
        "GET", "/api/2.0/mlflow/experiments/get-by-name", stack.admin_auth, params={"experiment_name": name}
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
        response = stack.mlflow(
            "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{target}", stack.admin_auth, data=b"payload"
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


def test_prefect_health_is_public_and_the_api_needs_the_auth_string(stack: Stack) -> None:
    assert stack.prefect("GET", "/health").status_code == 200
    assert stack.prefect("POST", "/flows/filter", json={}).status_code == 401
    assert stack.prefect("POST", "/flows/filter", "prefect:wrong-password", json={}).status_code == 401
    assert stack.prefect("POST", "/flows/filter", stack.prefect_auth_string, json={}).status_code == 200


def test_process_work_pool_has_a_polling_worker(stack: Stack) -> None:
    pool = stack.prefect("GET", f"/work_pools/{stack.work_pool}", stack.prefect_auth_string)
    assert pool.status_code == 200, pool.text
    assert pool.json()["type"] == "process"
    workers = stack.prefect("POST", f"/work_pools/{stack.work_pool}/workers/filter", stack.prefect_auth_string, json={})
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
        **base_env(),
        "STACK_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        "PREFECT_SERVER_API_AUTH_STRING": f"prefect:{secrets.token_hex(16)}",
        # A PostgreSQL port nothing listens on: a script that failed to refuse would
        # stop there instead of creating databases.
        "STACK_PG_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
    }
    if password is not None:
        env["MLFLOW_ADMIN_PASSWORD"] = password
    result = run_script(STACK_UP, env, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "state").exists(), "stack_up.sh touched the state directory before refusing"
