"""The MLflow tracking server down at the start of the train stage, and killed while the stages run
(issue 7, fault 3).

A real `mlflow server` (SQLite backend and artifacts in tmp, no auth) is started and SIGKILLed as a
subprocess; the stages run as `python -m pipeline train` and `python -m pipeline evaluate` against it.
The train stage only checks the server before its fit; the evaluate stage logs each training and
its evaluation as the variant's MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.config import load_params
from pipeline.ingest import run_ingest
from pipeline.layout import Layout
from pipeline.lineage import file_sha256
from pipeline.prepare import run_prepare
from tests.conftest import BIN, make_project, run, tiny_params
from tests.reliability.faults import (
    free_port,
    kill_group,
    mlflow_server_command,
    running,
    tail,
    tool_env,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.slow

VARIANT = "three_conv"
TRAIN = [str(BIN / "python"), "-m", "pipeline", "train", VARIANT]
EVALUATE = [str(BIN / "python"), "-m", "pipeline", "evaluate", VARIANT]
FAIL_FAST_SECONDS = 30


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params((VARIANT,))
    params["train"].update({"epochs": 12, "early_stopping_patience": 12})  # a fit of several seconds
    project = make_project(tmp_path_factory.mktemp("tracking-faults") / "project", params)
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return project


def test_server_down_at_start_fails_fast_naming_the_uri(prepared: Path) -> None:
    """Fault: MLFLOW_TRACKING_URI points at a loopback port nothing listens on.
    Expected: `python -m pipeline train` exits 2 within 30 s, before any training, with one message
    naming the URI and no traceback.
    Tolerance: time to fail < 30 s (measured from process start, Python and library imports included).
    """
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(TRAIN, prepared, check=False, timeout=120, env={"MLFLOW_TRACKING_URI": uri})
    seconds = time.monotonic() - started
    print(f"\n[fault 3] server down at start: exit {result.returncode} after {seconds:.1f}s")
    assert result.returncode == 2, result.stdout + result.stderr
    assert uri in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert seconds < FAIL_FAST_SECONDS
    assert not (prepared / ".cache" / "train" / VARIANT / "history.csv").exists()  # nothing was trained


def test_server_killed_during_the_stages_keeps_the_model_and_leaves_no_run_running(
        prepared: Path, tmp_path: Path) -> None:
    """Fault: the tracking server SIGKILLed (1) during the fit, then, after a restart, (2) while the
    evaluate stage's MLflow run is open (its run id written, the model not yet logged).
    Expected: (1) the fit completes and publishes models/<variant>/ (the train stage needs the
    server only at its start); the evaluate stage then fails within 30 s with exit 2 and one message
    naming the URI. (2) The evaluate stage fails with exit 2 and one message naming the server and
    saying the model and reports are kept; models/<variant>/ stays intact (same sha256). After the
    server is restarted, the rerun logs the run without retraining, marks the run the kill left open
    FAILED, and no run of the experiment is left RUNNING: exactly one FINISHED run, the rest FAILED.
    Tolerance: each failure is reported within 60 s of the kill (MLflow's client retries 2 times).
    """
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_command = mlflow_server_command(f"sqlite:///{server_dir / 'mlflow.db'}", server_dir / "artifacts", port)
    server_log = tmp_path / "server.log"
    env = tool_env(MLFLOW_TRACKING_URI=uri)
    work = prepared / ".cache" / "train" / VARIANT
    model = prepared / "models" / VARIANT / "model.keras"
    pending = Layout(prepared).pending_run_file(VARIANT)
    timings: dict[str, float] = {}

    def note(name: str, seconds: float) -> None:
        timings[name] = seconds
        print(f"\n[fault 3] {name}: {seconds:.1f}s", flush=True)

    # (1) Killed while the model trains: the fit goes on; the evaluate stage finds the server down.
    with running(server_command, server_dir, server_log) as server:
        note("server start", wait_healthy(f"{uri}/health", server, server_log))
        log = tmp_path / "train.log"
        with running(TRAIN, prepared, log, env) as training:
            wait_for(lambda: (work / "history.csv").is_file(), 300, "the first epoch", alive=training, log=log)
            kill_group(server)
            epochs_at_kill = len((work / "history.csv").read_text().splitlines()) - 1
            assert training.wait(timeout=300) == 0, tail(log)
    assert epochs_at_kill < 12 and "Epoch 12/12" in log.read_text(), "the server must die while the model trains"
    model_sha = file_sha256(model)
    assert json.loads((prepared / "models" / VARIANT / "training.json").read_text())["model_sha256"] == model_sha
    started = time.monotonic()
    down = run(EVALUATE, prepared, check=False, timeout=120, env={"MLFLOW_TRACKING_URI": uri})
    note("evaluate, server down -> exit", time.monotonic() - started)
    assert down.returncode == 2, down.stdout + down.stderr
    assert uri in down.stderr and "unreachable" in down.stderr
    assert "Traceback" not in down.stdout + down.stderr
    assert not pending.exists()  # no run was created

    # (2) Restarted, then killed again while the evaluate stage's MLflow run is open.
    with running(server_command, server_dir, server_log) as server:
        note("server restart", wait_healthy(f"{uri}/health", server, server_log))
        log = tmp_path / "evaluate-1.log"
        with running(EVALUATE, prepared, log, env) as evaluating:
            wait_for(pending.is_file, 300, "the MLflow run to be created", interval=0.02, alive=evaluating, log=log)
            kill_group(server)
            killed_at = time.monotonic()
            assert evaluating.wait(timeout=300) == 2, f"the stage finished before the kill:\n{tail(log)}"
            note("kill during logging -> exit", time.monotonic() - killed_at)
    output = log.read_text()
    assert "lost the tracking server while logging the run of three_conv" in output, output
    assert uri in output and str(Path("models") / VARIANT) in output
    assert "Traceback" not in output, output
    left_open = pending.read_text().strip()
    assert file_sha256(model) == model_sha

    # (3) Server back: the rerun logs the model, nothing is retrained, nothing left RUNNING.
    with running(server_command, server_dir, server_log) as server:
        wait_healthy(f"{uri}/health", server, server_log)
        client = mlflow.MlflowClient(tracking_uri=uri)
        assert client.get_run(left_open).info.status == "RUNNING"  # what the kill left
        started = time.monotonic()
        rerun = run(EVALUATE, prepared, timeout=600, env={"MLFLOW_TRACKING_URI": uri})
        note("rerun", time.monotonic() - started)
        run_id = json.loads(Layout(prepared).run_record(VARIANT).read_text())["run_id"]
        experiment = client.get_experiment_by_name("cnn-variants")
        statuses = {found.info.run_id: found.info.status for found in client.search_runs(
            [experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)}
        assert statuses[run_id] == "FINISHED" and statuses[left_open] == "FAILED"
        assert set(statuses.values()) <= {"FINISHED", "FAILED"}
        assert list(statuses.values()).count("FINISHED") == 1
        logged = client.get_run(run_id)
        assert logged.data.tags["variant"] == VARIANT and "test_accuracy" in logged.data.metrics
        # The run's times are the fit's (recorded by the train stage), not the evaluate stage's.
        record = json.loads(Layout(prepared).run_record(VARIANT).read_text())
        assert logged.info.start_time == record["fit_started_ms"] and logged.info.end_time == record["fit_ended_ms"]
    assert "[evaluate 1/1] three_conv" in rerun.stdout
    assert file_sha256(model) == model_sha  # the very file the fit saved, never retrained or re-saved
    assert not pending.exists() and not work.exists()
    assert timings["kill during logging -> exit"] < 60, timings
