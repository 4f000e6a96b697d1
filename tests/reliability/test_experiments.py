"""The experiment workflow as a new user tries it (issue 17, items 1 and 3), with real DVC:

- two `dvc exp run -S` at once in one workspace: the second fails before it touches anything, naming
  the queue; the first finishes and its experiment is saved with its own value;
- the queue (`dvc exp run --queue` + `dvc queue start -j 2`): every queued experiment is saved with its
  own params, and the workspace is left as it was;
- `dvc exp run -S` of one value changes one line of params.yaml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.workspace import WORKSPACE, lock_dir
from tests.conftest import REPO, make_project, run, tiny_params
from tests.reliability.faults import start, tool_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project (one variant) reproduced and committed: experiments rerun train and what follows."""
    project = make_project(tmp_path_factory.mktemp("experiments") / "project", tiny_params(("three_conv",)))
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline run"], project)
    return project


def workspace_copy(baseline: Path, destination: Path) -> Path:
    """The baseline with its DVC cache and outputs, without its MLflow store (a copy gets a store of its own)."""
    shutil.copytree(baseline, destination, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    return destination


def workspace_state(project: Path) -> dict[str, str]:
    """What a second experiment must not touch: params.yaml, the git status and the stash refs."""
    return {"params.yaml": (project / "params.yaml").read_text(),
            "status": run(["git", "status", "--porcelain"], project).stdout,
            "refs": run(["git", "for-each-ref", "refs/exps", "refs/stash"], project).stdout}


def claims(project: Path) -> list[dict]:
    try:
        lock = json.loads((lock_dir(project) / "rwlock").read_text())
    except (OSError, ValueError):
        return []
    return lock.get("read", {}).get(WORKSPACE, [])


def experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {params: params.yaml's values, metrics: test metrics}."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs", []):
                data = revision.get("data") or {}
                found[revision.get("name") or revision["rev"]] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": data.get("metrics", {}).get("reports/metrics/three_conv.json", {}).get("data", {})}
    return found


def test_second_concurrent_exp_run_fails_before_touching_the_workspace(baseline: Path, tmp_path: Path) -> None:
    """Issue 17 #1. Before: the second `dvc exp run -S` wrote its value into params.yaml, then lost DVC's
    lock; the first trained with that foreign value, failed with "'NoneType' object is not
    subscriptable", and no experiment was saved. Now the first run's first stage claims the workspace
    in DVC's experiments lock, and the second fails at DVC's own check, before writing anything."""
    project = workspace_copy(baseline, tmp_path / "project")
    log = tmp_path / "first.log"
    first = start(["dvc", "exp", "run", "-S", "train.batch_size=16"], project, log)
    try:
        wait_for(lambda: claims(project), 300, "the first run's claim on the workspace", alive=first, log=log,
                 interval=0.2)
        before = workspace_state(project)
        second = run(["dvc", "exp", "run", "-S", "train.batch_size=64"], project, check=False)
        assert second.returncode != 0
        output = second.stdout + second.stderr
        assert "'workspace' is busy" in output and "dvc exp run -S train.batch_size=16" in output, output
        assert "dvc exp run --queue -S" in output and "dvc queue start -j" in output, output
        assert workspace_state(project) == before
        assert first.wait(timeout=900) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    saved = experiments(project)
    assert [found["params"]["train"]["batch_size"] for found in saved.values()] == [16], saved
    assert "batch_size: 16" in (project / "params.yaml").read_text()  # the first run's result is applied
    wait_for(lambda: not claims(project), 60, "the claim to be released after the run")


def test_queued_experiments_run_with_their_own_params_and_leave_the_workspace_alone(
        baseline: Path, tmp_path: Path) -> None:
    """Issue 17 #1, the supported way to run many: queue them, then run them side by side."""
    project = workspace_copy(baseline, tmp_path / "project")
    before = workspace_state(project)
    rates = ("0.001", "0.003")
    for rate in rates:
        queued = run(["dvc", "exp", "run", "--queue", "-S", f"train.learning_rate={rate}"], project)
        assert "Queued experiment" in queued.stdout
    try:
        run(["dvc", "queue", "start", "-j", "2"], project)

        def finished() -> bool:
            status = run(["dvc", "queue", "status"], project).stdout
            return "Queued" not in status and "Running" not in status

        wait_for(finished, 1200, "the queued experiments to finish", interval=2)
        status = run(["dvc", "queue", "status"], project).stdout
        assert status.count("Success") == len(rates), status
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)
    saved = experiments(project)
    assert sorted(str(found["params"]["train"]["learning_rate"]) for found in saved.values()) == list(rates), saved
    assert all("test_accuracy" in found["metrics"] for found in saved.values()), saved
    after = workspace_state(project)
    assert after["params.yaml"] == before["params.yaml"] and after["status"] == before["status"]
    assert after["refs"].count("refs/exps/") == len(rates)  # the saved experiments, nothing else
    assert not claims(project)


def test_exp_run_of_one_value_changes_one_line_of_params_yaml(tmp_path: Path) -> None:
    """Issue 17 #3: params.yaml is written in the style DVC writes back (block lists, empty nulls), so
    an experiment's diff is the line it sets (it was a 180-line diff). Only the cheap `ingest` stage runs."""
    project = make_project(tmp_path / "project")
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    run(["git", "commit", "-q", "-am", "the shipped params.yaml"], project)
    run(["dvc", "exp", "run", "-S", "data.max_images=100", "ingest"], project)
    assert run(["git", "diff", "--numstat", "params.yaml"], project).stdout.split() == ["1", "1", "params.yaml"]
    changed = [line for line in run(["git", "diff", "-U0", "params.yaml"], project).stdout.splitlines()
               if line.startswith("+") and not line.startswith("+++")]
    assert len(changed) == 1 and changed[0].split("#")[0].split() == ["+", "max_images:", "100"], changed


def test_claim_is_only_taken_for_a_stage_dvc_runs_in_its_workspace(tmp_path: Path) -> None:
    """Outside DVC (a stage run by hand, the Prefect flow) no claim is made; a stage of a queued
    experiment runs in a copy whose DVC_ROOT is the original workspace, and claims nothing either."""
    project = make_project(tmp_path / "project")
    command = ["python", "-c", "from pipeline.workspace import claim_for_dvc_run; claim_for_dvc_run()"]
    subprocess.run(command, cwd=project, env=tool_env(), check=True)
    subprocess.run(command, cwd=project, env=tool_env(DVC_STAGE="ingest", DVC_ROOT=str(tmp_path)), check=True)
    assert not claims(project)
    subprocess.run(command, cwd=project, env=tool_env(DVC_STAGE="ingest", DVC_ROOT=str(project)), check=True)
    assert claims(project)  # this test process's python: its watcher releases it when that process ends
