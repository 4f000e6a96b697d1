"""The MLflow tracking server down at the start of the train stage, and killed during it (issue 7, fault 3).

A real `mlflow server` (SQLite backend and artifacts in tmp, no auth) is started and SIGKILLed as a
subprocess; the train stage runs as `python -m pipeline train` against it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.ingest import run_ingest
from pipeline.layout import Layout
from pipeline.lineage import file_sha256
from pipeline.model_files import load_model_checked
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


def test_server_killed_during_the_stage_keeps_the_training_and_leaves_no_run_running(
        prepared: Path, tmp_path: Path) -> None:
    """Fault: the tracking server SIGKILLed (1) during the fit, then, after a restart, (2) while the
    rerun's MLflow run is open (its run id written, model not yet logged).
    Expected: each time the stage fails with exit 2 and one message naming the server URI and saying
    the finished training is kept; models/<variant>/ and `.cache/train/<variant>/trained/` stay
    intact (same model sha256). After the server is restarted, the rerun logs the run without
    retraining ("reusing the finished training", no epoch lines), marks the run the kill left open
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
    timings: dict[str, float] = {}

    def note(name: str, seconds: float) -> None:
        timings[name] = seconds
        print(f"\n[fault 3] {name}: {seconds:.1f}s", flush=True)

    # (1) Killed while the model trains.
    with running(server_command, server_dir, server_log) as server:
        note("server start", wait_healthy(f"{uri}/health", server, server_log))
        log = tmp_path / "train-1.log"
        with running(TRAIN, prepared, log, env) as training:
            wait_for(lambda: (work / "history.csv").is_file(), 300, "the first epoch", alive=training, log=log)
            kill_group(server)
            killed_at = time.monotonic()
            epochs_at_kill = len((work / "history.csv").read_text().splitlines()) - 1
            assert training.wait(timeout=300) == 2, tail(log)
            note("kill during fit -> exit", time.monotonic() - killed_at)
    output = log.read_text()
    assert epochs_at_kill < 12 and "Epoch 12/12" in output, "the server must die while the model trains"
    _assert_clear_failure(output, uri, work)
    model_sha = file_sha256(work / "trained" / "model.keras")
    assert json.loads((work / "trained" / "training.json").read_text())["model_sha256"] == model_sha
    written = json.loads((prepared / "models" / VARIANT / "training.json").read_text())["model_sha256"]
    assert file_sha256(prepared / "models" / VARIANT / "model.keras") == written  # the outputs are complete
    assert not (work / "mlflow_run_id").exists()  # no run was created

    # (2) Restarted, then killed again while the rerun's MLflow run is open.
    with running(server_command, server_dir, server_log) as server:
        note("server restart", wait_healthy(f"{uri}/health", server, server_log))
        log = tmp_path / "train-2.log"
        with running(TRAIN, prepared, log, env) as training:
            wait_for(lambda: (work / "mlflow_run_id").is_file(), 300, "the MLflow run to be created",
                     interval=0.02, alive=training, log=log)
            kill_group(server)
            killed_at = time.monotonic()
            assert training.wait(timeout=300) == 2, f"the stage finished before the kill:\n{tail(log)}"
            note("kill during logging -> exit", time.monotonic() - killed_at)
    output = log.read_text()
    assert "reusing the finished training" in output and "Epoch" not in output
    _assert_clear_failure(output, uri, work)
    left_open = (work / "mlflow_run_id").read_text().strip()
    trained_weights = weights_digest(work / "trained" / "model.keras")
    assert file_sha256(work / "trained" / "model.keras") == model_sha

    # (3) Server back: the rerun logs the kept training, no retraining, nothing left RUNNING.
    with running(server_command, server_dir, server_log) as server:
        wait_healthy(f"{uri}/health", server, server_log)
        client = mlflow.MlflowClient(tracking_uri=uri)
        assert client.get_run(left_open).info.status == "RUNNING"  # what the kill left
        started = time.monotonic()
        rerun = run(TRAIN, prepared, timeout=600, env={"MLFLOW_TRACKING_URI": uri})
        note("rerun (no training)", time.monotonic() - started)
        assert "reusing the finished training" in rerun.stdout and "Epoch" not in rerun.stdout
        run_id = json.loads(Layout(prepared).run_record(VARIANT).read_text())["run_id"]
        experiment = client.get_experiment_by_name("cnn-variants")
        statuses = {found.info.run_id: found.info.status for found in client.search_runs(
            [experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)}
        assert statuses[run_id] == "FINISHED" and statuses[left_open] == "FAILED"
        assert set(statuses.values()) <= {"FINISHED", "FAILED"}
        assert list(statuses.values()).count("FINISHED") == 1
        assert client.get_run(run_id).data.tags["variant"] == VARIANT
    # The very file the fit saved is published, not a re-save of the reloaded model.
    assert file_sha256(prepared / "models" / VARIANT / "model.keras") == model_sha
    assert weights_digest(prepared / "models" / VARIANT / "model.keras") == trained_weights
    assert not work.exists()  # cleaned up once tracked
    for name in ("kill during fit -> exit", "kill during logging -> exit"):
        assert timings[name] < 60, timings


def weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for array in load_model_checked(path).get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _assert_clear_failure(output: str, uri: str, work: Path) -> None:
    assert "lost the tracking server while logging the run of three_conv" in output, output
    assert uri in output and str(Path(".cache") / "train" / VARIANT / "trained") in output
    assert "Traceback" not in output, output
    assert (work / "trained" / "training.json").is_file() and (work / "trained" / "model.keras").is_file()
