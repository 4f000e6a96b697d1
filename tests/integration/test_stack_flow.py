"""The training flow against the native stack, checked from the outside.

`stack_training` (conftest.py) runs `python -m flows.training` once on tiny data with nothing but
the environment pointing it at the stack: MLFLOW_TRACKING_URI and the non-admin pipeline user's
credentials, PREFECT_API_URL and PREFECT_API_AUTH_STRING. The tests then look at what it left
where a person would look: MLflow's and Prefect's REST APIs (plain HTTP with credentials, not the
client libraries the flow itself used), the PostgreSQL databases, and the S3 DVC remote of
.dvc/config (moto's S3 server standing in for the compose stack's MinIO).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import TINY_VARIANTS, run
from tests.integration.conftest import (
    EXPERIMENT_NAME,
    MODEL_NAME,
    PG,
    Stack,
    StackTraining,
    experiment_runs,
    free_port,
    metrics_of,
    tags_of,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FLOW_NAME = "train-cnn-variants"
# The S3 remote of .dvc/config that the compose stack's MinIO serves.
DVC_REMOTE = "stack"
# Task runs of one flow run over TINY_VARIANTS: the per-variant fan-out plus the shared stages.
EXPECTED_TASKS = {"refresh-data", "ingest", "prepare", "compare", "register"} | {
    f"{stage}-{variant}" for stage in ("train", "evaluate") for variant in TINY_VARIANTS
}


def _flow_run_id(stack: Stack) -> str:
    """The Prefect flow run the MLflow runs name (the flow tags every run it trains)."""
    ids = {tags_of(run_).get("prefect_flow_run_id") for run_ in experiment_runs(stack)}
    assert len(ids) == 1 and None not in ids, f"runs name flow runs {ids}"
    return ids.pop()


def test_each_variant_has_one_finished_run_with_metrics(stack: Stack, stack_training: StackTraining) -> None:
    runs = experiment_runs(stack)
    assert sorted(run_["info"]["run_name"] for run_ in runs) == sorted(TINY_VARIANTS)
    for run_ in runs:
        name = run_["info"]["run_name"]
        assert run_["info"]["status"] == "FINISHED", name
        metrics = metrics_of(run_)
        for key in ("epoch_accuracy", "epoch_val_accuracy", "val_accuracy", "test_accuracy", "test_loss"):
            assert key in metrics, f"{name} has no {key}: {sorted(metrics)}"
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert tags_of(run_).get("variant") == name


def test_champion_alias_points_at_a_run_of_this_flow(stack: Stack, stack_training: StackTraining) -> None:
    champion = stack.mlflow(
        "GET",
        "/api/2.0/mlflow/registered-models/alias",
        stack.tracking_auth,
        params={"name": MODEL_NAME, "alias": "champion"},
    )
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]
    assert version["status"] == "READY"
    assert "champion" in version["aliases"]
    assert version["run_id"] in {run_["info"]["run_id"] for run_ in experiment_runs(stack)}


def test_mlflow_api_refuses_the_results_without_credentials(stack: Stack, stack_training: StackTraining) -> None:
    for path, params in [
        ("/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": EXPERIMENT_NAME}),
        ("/api/2.0/mlflow/registered-models/alias", {"name": MODEL_NAME, "alias": "champion"}),
    ]:
        assert stack.mlflow("GET", path, params=params).status_code == 401, path


def test_runs_and_registry_are_rows_in_the_mlflow_database(stack: Stack, stack_training: StackTraining) -> None:
    rest_accuracy = {run_["info"]["run_name"]: metrics_of(run_)["test_accuracy"] for run_ in experiment_runs(stack)}
    with (
        psycopg2.connect(dbname=stack.databases["STACK_MLFLOW_DB"], **PG) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT runs.name, runs.status, runs.user_id FROM runs"
            " JOIN experiments ON experiments.experiment_id = runs.experiment_id"
            " WHERE experiments.name = %s AND runs.lifecycle_stage = 'active'",
            (EXPERIMENT_NAME,),
        )
        # Logged as the non-admin user the stack created, not as the admin.
        assert sorted(cursor.fetchall()) == sorted((name, "FINISHED", stack.tracking_auth[0]) for name in TINY_VARIANTS)
        cursor.execute(
            "SELECT runs.name, latest_metrics.value FROM latest_metrics"
            " JOIN runs ON runs.run_uuid = latest_metrics.run_uuid"
            " JOIN experiments ON experiments.experiment_id = runs.experiment_id"
            " WHERE experiments.name = %s AND latest_metrics.key = 'test_accuracy'",
            (EXPERIMENT_NAME,),
        )
        assert dict(cursor.fetchall()) == pytest.approx(rest_accuracy)
        cursor.execute("SELECT name, alias FROM registered_model_aliases WHERE name = %s", (MODEL_NAME,))
        assert (MODEL_NAME, "champion") in cursor.fetchall()


def test_prefect_server_recorded_the_completed_flow_run(stack: Stack, stack_training: StackTraining) -> None:
    flow_run_id = _flow_run_id(stack)
    assert stack.prefect("GET", f"/flow_runs/{flow_run_id}").status_code == 401

    flow_run = stack.prefect("GET", f"/flow_runs/{flow_run_id}", stack.prefect_auth_string)
    assert flow_run.status_code == 200, flow_run.text
    assert flow_run.json()["state_type"] == "COMPLETED", flow_run.json()["state"]
    flow = stack.prefect("GET", f"/flows/{flow_run.json()['flow_id']}", stack.prefect_auth_string)
    assert flow.status_code == 200, flow.text
    assert flow.json()["name"] == FLOW_NAME

    task_runs = stack.prefect(
        "POST", "/task_runs/filter", stack.prefect_auth_string, json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
    )
    assert task_runs.status_code == 200, task_runs.text
    # Task run names of the shared stages end in a generated suffix (ingest-a94).
    names = {task["name"] for task in task_runs.json()}
    states = {task["state_type"] for task in task_runs.json()}
    assert {name if name in EXPECTED_TASKS else name.rsplit("-", 1)[0] for name in names} == EXPECTED_TASKS
    assert states == {"COMPLETED"}

    artifacts = stack.prefect(
        "POST",
        "/artifacts/filter",
        stack.prefect_auth_string,
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
    )
    assert artifacts.status_code == 200, artifacts.text
    assert {artifact["key"] for artifact in artifacts.json()} >= {"leaderboard", "training-report"}


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _bucket_digests(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    """Like _digests for what a DVC remote holds in a bucket: keys relative to <prefix>/files/."""
    root = f"{prefix}/files/" if prefix else "files/"
    digests = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            digests[item["Key"].removeprefix(root)] = hashlib.sha256(body).hexdigest()
    return digests


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """An S3 API on loopback (moto's server) standing in for the compose stack's MinIO."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (a dev dependency)")
    # Any key works with moto; no developer's AWS profile, endpoint or session may leak in.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "aws-config"
    empty.touch()  # botocore refuses os.devnull here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stack-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stack-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_dvc_push_to_the_stack_s3_remote_and_pull_back(stack_training: StackTraining, s3_endpoint: str) -> None:
    import boto3

    project = stack_training.project
    url = run(["dvc", "config", f"remote.{DVC_REMOTE}.url"], project).stdout.strip()
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)  # minio-init's job in the compose stack
    # The remote as .dvc/config defines it; only the endpoint differs, in the uncommitted config.local.
    run(["dvc", "remote", "modify", "--local", DVC_REMOTE, "endpointurl", s3_endpoint], project)
    run(["dvc", "push", "-r", DVC_REMOTE], project)

    pushed = _bucket_digests(s3, bucket, prefix)
    # Content-addressed objects (md5/xx/...) in both. The cache may hold more than the current
    # outputs (superseded versions); the pull below shows the remote holds enough.
    cache = project / ".dvc" / "cache"
    assert pushed, f"dvc push wrote nothing under {url}/files"
    assert pushed.items() <= _digests(cache / "files").items(), "the bucket holds objects the cache does not"
    assert any(key.endswith(".dir") for key in pushed), "no directory output (data/prepared, models/...) pushed"
    assert "in sync" in run(["dvc", "status", "--cloud", "-r", DVC_REMOTE], project).stdout

    # The bucket alone restores the outputs: drop them and the cache, then pull.
    outputs = [project / "data" / "prepared", *(path for path in (project / "models").iterdir() if path.is_dir())]
    assert len(outputs) == 1 + len(TINY_VARIANTS), outputs
    before = {output: _digests(output) for output in outputs}
    shutil.rmtree(cache)
    for output in outputs:
        shutil.rmtree(output)
    run(["dvc", "pull", "-r", DVC_REMOTE], project)
    assert {output: _digests(output) for output in outputs} == before
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
