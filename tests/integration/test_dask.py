"""The training flow with its per-variant tasks on a real Dask cluster (worker processes, not threads).

A `distributed.LocalCluster` with two single-threaded worker processes on loopback, handed to the flow
by address as a remote cluster would be. Where each task ran is read from the scheduler's task
stream (which worker executed which task) and the workers' process ids (`Client.run(os.getpid)`).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.training import training_flow
from tests.conftest import TINY_VARIANTS, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness() -> None:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_variants_train_in_dask_worker_processes(harness: None, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    project = make_project(tmp_path / "project")
    # Created after conftest's fixtures set the environment, which the worker processes inherit.
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None) as cluster,
          Client(cluster) as client):
        worker_pids = client.run(os.getpid)  # {worker address: pid}
        with get_task_stream(client) as stream:
            state = training_flow(root=str(project), dask_address=cluster.scheduler_address, return_state=True)
        executed = stream.data
    assert state.is_completed(), state.message
    flow_run_id = str(state.state_details.flow_run_id)

    assert len(worker_pids) == 2 and os.getpid() not in worker_pids.values()
    # prefect-dask submits each task run under the key "<task function>-<token>".
    trained_on = [record["worker"] for record in executed if record["key"].startswith("train_task-")]
    evaluated_on = [record["worker"] for record in executed if record["key"].startswith("evaluate_task-")]
    assert len(trained_on) == len(TINY_VARIANTS) and len(evaluated_on) == len(TINY_VARIANTS)
    assert set(trained_on + evaluated_on) <= set(worker_pids), "a variant task ran outside the Dask workers"

    for variant in TINY_VARIANTS:
        assert (project / "models" / variant / "training.json").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cnn-variants"], output_format="list")
    assert sorted(run.data.tags["variant"] for run in runs) == sorted(TINY_VARIANTS)
    assert {run.data.tags["prefect_flow_run_id"] for run in runs} == {flow_run_id}
