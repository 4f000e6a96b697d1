"""Faults of `python -m pipeline tune`, caused for real: `kill -9` during a trial, and a study storage that
does not answer."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.errors import StudyStorageError
from pipeline.ingest import run_ingest
from pipeline.prepare import run_prepare
from pipeline.study import open_storage
from tests.conftest import BIN, make_project, run, tiny_params
from tests.reliability.faults import free_port, running, tool_env, wait_for

pytestmark = pytest.mark.slow

TRIALS = 4
TUNE = [str(BIN / "python"), "-m", "pipeline", "tune", "three_conv", "--trials", str(TRIALS)]
FAIL_FAST_SECONDS = 30


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(("three_conv",))
    # Batches of 8 for 6 to 8 epochs: trials of several seconds, so the kill lands inside one. No pruning
    # (startup_trials above the trial count): every trial that is not killed completes.
    params["models"]["three_conv"]["tune"] = {"batch_size": [8], "epochs": {"low": 6, "high": 8},
                                              "learning_rate": {"low": 0.001, "high": 0.01, "log": True}}
    params["tune"] = {"startup_trials": 10, "warmup_epochs": 0, "heartbeat_seconds": 10,
                      "experiment_name": "cnn-tuning"}
    project = make_project(tmp_path_factory.mktemp("tune-faults") / "project", params)
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return project


def trials(project: Path) -> dict[int, tuple[str, float | None, str | None]]:
    """{number: (state, value, completed at)} read straight from the study's SQLite file."""
    database = project / "optuna.db"
    if not database.is_file():
        return {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        try:
            rows = connection.execute(
                "SELECT t.number, t.state, v.value, t.datetime_complete FROM trials t "
                "LEFT JOIN trial_values v ON v.trial_id = t.trial_id").fetchall()
        except sqlite3.OperationalError:  # the tables are being created
            return {}
    return {number: (state, value, completed) for number, state, value, completed in rows}


def epochs_reported(project: Path, number: int) -> int:
    with sqlite3.connect(f"file:{project / 'optuna.db'}?mode=ro", uri=True, timeout=30) as connection:
        return connection.execute(
            "SELECT count(*) FROM trial_intermediate_values i JOIN trials t ON t.trial_id = i.trial_id "
            "WHERE t.number = ?", (number,)).fetchone()[0]


def test_a_study_killed_during_a_trial_continues_where_it_stopped(project: Path, tmp_path: Path) -> None:
    """Fault: `kill -9` of the tune command (its whole process group) during its second or a later
    trial, one epoch into it.
    Expected: rerunning the same command keeps the finished trials as they were (not rerun), marks the
    killed one FAIL with the reason, says so, and runs only the missing trials: the study ends with
    TRIALS complete trials and nothing RUNNING.
    """
    log = tmp_path / "tune.log"

    def killable_trial() -> int | None:
        found = trials(project)
        done = [number for number, (state, _, _) in found.items() if state == "COMPLETE"]
        running_now = [number for number, (state, _, _) in found.items() if state == "RUNNING"]
        if done and running_now and epochs_reported(project, running_now[0]) >= 1:
            return running_now[0]
        return None

    with running(TUNE, project, log) as process:
        killed = wait_for(killable_trial, 600, "a trial running after a complete one", interval=0.2,
                          alive=process, log=log)
        process.send_signal(9)
        process.wait(timeout=60)
    before = trials(project)
    assert before[killed][0] == "RUNNING"  # what a kill -9 leaves
    finished = {number: row for number, row in before.items() if row[0] == "COMPLETE"}

    result = run(TUNE, project, timeout=900, env=tool_env())
    output = result.stdout + result.stderr
    assert f"trial {killed} of the study was left running by a process that ended: marked failed" in output
    after = trials(project)
    assert after[killed][0] == "FAIL"
    assert {number: after[number] for number in finished} == finished  # kept as they were, not rerun
    assert sorted(state for state, _, _ in after.values()).count("COMPLETE") == TRIALS
    assert "RUNNING" not in {state for state, _, _ in after.values()}
    assert sorted(after) == list(range(TRIALS + 1))  # the killed trial's number is not reused
    with sqlite3.connect(project / "optuna.db") as connection:
        reason = connection.execute(
            "SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
            "WHERE t.number = ? AND a.key = 'fail_reason'", (killed,)).fetchone()[0]
    assert "ended during the trial" in reason
    assert not list((project / ".cache" / "tune").glob(f"*/trial-{killed}"))  # its work directory removed


def test_a_storage_that_does_not_answer_fails_in_seconds_naming_the_url_without_password(project: Path) -> None:
    """Fault: PIPELINE_TUNE_STORAGE names a PostgreSQL server that accepts the connection and never
    answers (a loopback socket that is never served), then one where nothing listens.
    Expected: exit 2 before any trial, one line naming the URL with the password masked, no traceback.
    Tolerance: time to fail < 30 s (the connect timeout is 5 s; Python and library imports included).
    """
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        url = f"postgresql://tuner:s3cret@127.0.0.1:{silent.getsockname()[1]}/studies"
        started = time.monotonic()
        result = run(TUNE, project, check=False, timeout=300, env=tool_env(PIPELINE_TUNE_STORAGE=url))
        seconds = time.monotonic() - started
    print(f"\n[tune storage] silent server: exit {result.returncode} after {seconds:.1f}s")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"postgresql://tuner:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in result.stderr
    assert "unreachable" in result.stderr and "s3cret" not in output and "Traceback" not in output
    assert seconds < FAIL_FAST_SECONDS
    assert "[tune three_conv] trial" not in output  # no trial started

    refused = f"postgresql://tuner:s3cret@127.0.0.1:{free_port()}/studies"
    with pytest.raises(StudyStorageError) as raised:
        open_storage(refused, heartbeat_seconds=10)
    assert "tuner:***@127.0.0.1" in str(raised.value) and "s3cret" not in str(raised.value)
