"""The MLflow store as it goes wrong for a new user (issue 17, items 6 and 10), for real: a store made
read-only (its file chmod 0444, the stage without root's override of file permissions) and a project
copied with its store, which still names the original's artifact folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_project, run, tiny_params
from tests.reliability.faults import as_unprivileged_user, tool_env, tree_md5
from tests.reliability.test_bad_input import _assert_clean_failure

pytestmark = pytest.mark.slow
REGISTER = ["python", "-m", "pipeline", "register"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project run by `dvc repro compare`: a tracked run of one variant, scored and ranked;
    the register stage has not run."""
    project = make_project(tmp_path_factory.mktemp("store") / "project", tiny_params(("three_conv",)))
    run(["dvc", "repro", "compare"], project)
    return project


def _register(project: Path, unprivileged: bool = False):
    import subprocess

    return subprocess.run(REGISTER, cwd=project, env=tool_env(), capture_output=True, text=True, timeout=600,
                          check=False, **(as_unprivileged_user() if unprivileged else {}))


def test_read_only_store_fails_register_in_one_line_and_records_nothing(compared: Path) -> None:
    """Issue 17 #10: before, a 253-line SQLAlchemy traceback (exit 1). Now exit 2, one line naming the
    store, and neither reports/registry.json nor the model card claims a decision; with the store
    writable again the same command registers."""
    store = compared / "mlflow.db"
    store.chmod(0o444)
    try:
        refused = _register(compared, unprivileged=True)
    finally:
        store.chmod(0o644)
    _assert_clean_failure(refused, f"the MLflow store sqlite:///{store} refused registering a model version",
                          "attempt to write a readonly database")
    assert not (compared / "reports" / "registry.json").exists()
    assert not (compared / "reports" / "model_card.md").exists()
    registered = run(REGISTER, compared)
    assert "registered mnist-cnn v1 (three_conv)" in registered.stdout
    assert json.loads((compared / "reports" / "registry.json").read_text())["version"] == "1"


def test_copied_project_refuses_to_log_into_the_original(compared: Path, tmp_path: Path) -> None:
    """Issue 17 #6: mlflow.db stores absolute artifact locations, so a copy logged its artifacts (here
    the register stage's model card) into the original's mlruns/. Now the copy stops when tracking
    starts, naming both folders and the fix, and the original is untouched."""
    original = tree_md5(compared / "mlruns")
    copy = tmp_path / "copy"
    shutil.copytree(compared, copy, symlinks=True)
    (copy / "reports" / "registry.json").unlink(missing_ok=True)
    refused = run(REGISTER, copy, check=False)
    _assert_clean_failure(refused, f"keeps the artifacts of experiment 'cnn-variants' in {compared / 'mlruns'}",
                          f"outside this project {copy}")
    assert "move mlflow.db and mlruns/ aside" in refused.stderr
    assert tree_md5(compared / "mlruns") == original
    assert not (copy / "reports" / "registry.json").exists()
    # The fix the message names: a store of the copy's own.
    (copy / "mlflow.db").rename(copy / "mlflow.db.original")
    shutil.move(copy / "mlruns", copy / "mlruns.original")
    fresh = run(REGISTER, copy, check=False)
    assert fresh.returncode == 2 and "no finished MLflow run" in fresh.stderr  # this store has no training
    assert tree_md5(compared / "mlruns") == original
