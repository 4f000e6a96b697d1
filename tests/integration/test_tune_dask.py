"""The `tune-variant` flow with its trials on two Dask worker processes sharing a PostgreSQL study storage.

A `distributed.LocalCluster` of two single-threaded worker processes on loopback, handed to the flow by
address as a remote cluster would be, and a PostgreSQL database created for the test (dropped after).
The workers read the storage URL from the environment they inherit, as remote workers would from theirs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import psycopg2
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.tune import shares, tune_flow
from tests.integration.conftest import PG, drop_databases, postgres_unreachable
from tests.integration.test_tune import prepared_tune_project

pytestmark = pytest.mark.slow

TRIALS = 4


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def postgres_storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    unreachable = postgres_unreachable()
    assert unreachable is None, f"this test needs PostgreSQL on 127.0.0.1:5432 (user postgres): {unreachable}"
    name = f"test_tune_{uuid.uuid4().hex[:10]}"
    connection = psycopg2.connect(dbname="postgres", **PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    url = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    monkeypatch.setenv("PIPELINE_TUNE_STORAGE", url)  # before the cluster starts: its workers inherit it
    try:
        yield url
    finally:
        drop_databases([name])


def test_shares_split_the_missing_trials_evenly() -> None:
    assert shares(7, 3) == [3, 2, 2] and shares(1, 2) == [1, 0] and sum(shares(40, 3)) == 40


def test_two_dask_workers_finish_the_trials_with_none_lost_or_run_twice(
        harness: None, postgres_storage: str, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    project = prepared_tune_project(tmp_path / "project")
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None) as cluster,
          Client(cluster) as client):
        worker_pids = set(client.run(os.getpid).values())
        state = tune_flow(variant="three_conv", trials=TRIALS, workers=2, root=str(project),
                          dask_address=cluster.scheduler_address, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()

    study = optuna.load_study(study_name=report["study"], storage=postgres_storage)
    trials = study.get_trials(deepcopy=False)
    assert [trial.number for trial in trials] == list(range(TRIALS))  # none lost, none twice
    assert {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}
    ran_in = {trial.user_attrs["process"]["pid"] for trial in trials}
    assert ran_in == worker_pids and os.getpid() not in ran_in  # both worker processes, not the flow's
    drawn = [tuple(sorted(trial.params.items())) for trial in trials]
    assert len(set(drawn)) == TRIALS  # each worker's sampler has its own seed: no draw repeated
    assert sum(report["trials"][state] for state in ("complete", "pruned")) == TRIALS
    assert report["storage"] == postgres_storage  # no password to mask here
    assert sorted(added["results"] for added in report["added"]) == [2, 2]

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cnn-tuning"], output_format="list")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == report["mlflow_parent_run_id"]]
    assert sorted(int(run.data.tags["trial"]) for run in children) == list(range(TRIALS))
