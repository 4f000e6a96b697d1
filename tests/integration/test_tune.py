"""`tune` for real on a few hundred images: trials fitted with the pruning callback, an MLflow parent run
with a child run per trial, the results file, `--apply` reproducing the best trial, invalid drawn models.

The project's test split files are deleted before tuning: the study runs without them, so it never
reads them (selection uses the validation split only).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import mlflow
import optuna
import pytest

from pipeline.checkpoint import WorkDir
from pipeline.config import PipelineConfig, load_params, parse_params, read_params_file
from pipeline.dataset import model_outputs
from pipeline.ingest import run_ingest
from pipeline.layout import Layout
from pipeline.prepare import run_prepare
from pipeline.study import open_storage, open_study, storage_url
from pipeline.train import fit_variant
from pipeline.tune import apply_best, load_tuning_data, run_tune
from tests.conftest import make_project, tiny_params

pytestmark = pytest.mark.slow

# One or two epochs of batch 32 on 280 training images: a few seconds per trial.
TINY_SPACE = {"batch_size": [32], "learning_rate": {"low": 1e-05, "high": 0.01, "log": True},
              "epochs": {"low": 1, "high": 2}}
TINY_TUNE = {"startup_trials": 1, "warmup_epochs": 0, "trials": 3, "heartbeat_seconds": 10,
             "experiment_name": "cnn-tuning"}


def tiny_tune_params(space: dict | None = None) -> dict:
    """The tests' tiny params (three_conv only) with a tiny search space and study settings."""
    params = tiny_params(("three_conv",))
    params["models"]["three_conv"]["tune"] = copy.deepcopy(space or TINY_SPACE)
    params["tune"] = dict(TINY_TUNE)
    return params


def prepared_tune_project(destination: Path) -> Path:
    """A tiny project with data/prepared and its test split files deleted."""
    project = make_project(destination, tiny_tune_params())
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    (Layout(project).prepared_dir / "test.npy").unlink()  # the test split's rows of data/raw
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_tune_project(tmp_path_factory.mktemp("tune") / "project")


def enqueue(config: PipelineConfig, project: Path, *trials: dict) -> str:
    """Open the variant's study and queue trials with fixed settings (Optuna runs queued trials first)."""
    ref = open_study(config, "three_conv", project)
    study = optuna.load_study(study_name=ref.name, storage=open_storage(storage_url(project), 10))
    for params in trials:
        study.enqueue_trial(params)
    return ref.name


@pytest.fixture(scope="module")
def report(project: Path) -> dict:
    """Three queued trials: a good learning rate; one far too small (pruned after its first epoch, below
    the first trial's accuracy there); the first one's settings with one epoch (its first epoch equals
    the first trial's, which the median pruner does not prune: completes)."""
    config = load_params(project / "params.yaml")
    enqueue(config, project, {"batch_size": 32, "learning_rate": 0.005, "epochs": 2},
            {"batch_size": 32, "learning_rate": 1e-05, "epochs": 2},
            {"batch_size": 32, "learning_rate": 0.005, "epochs": 1})
    return run_tune(config, "three_conv", project, params_file=project / "params.yaml")


def test_trials_run_without_the_test_split_and_the_best_is_reported(project: Path, report: dict) -> None:
    assert not (Layout(project).prepared_dir / "test.npy").exists()  # never needed, never read
    states = [trial["state"] for trial in report["trial_list"]]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"] and report["trials"]["complete"] == 2
    assert report["trial_list"][1]["value"] < report["trial_list"][0]["value"]
    best = report["best"]
    assert best["val_accuracy"] == max(report["trial_list"][0]["value"], report["trial_list"][2]["value"])
    assert best["settings"]["models.three_conv.train.learning_rate"] == 0.005
    assert best["dvc_exp_run"].startswith("dvc exp run -S ") and "learning_rate=" in best["dvc_exp_run"]
    written = Layout(project).tune_report("three_conv")
    assert written.is_file() and str(best["trial"]) in written.read_text()


def test_the_study_is_a_parent_run_with_a_child_run_per_trial(project: Path, report: dict) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cnn-tuning"], output_format="list")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.data.tags["trial"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert len(parents) == 1 and parents[0].info.run_id == report["mlflow_parent_run_id"]
    parent = parents[0]
    assert sorted(children) == ["0", "1", "2"]
    assert {run.data.tags["mlflow.parentRunId"] for run in children.values()} == {parent.info.run_id}
    pruned = children["1"]
    assert pruned.info.status == "KILLED" and pruned.info.run_name == "trial-1-pruned"
    assert pruned.data.tags["optuna_state"] == "PRUNED" and pruned.data.metrics["pruned_at_epoch"] == 1
    complete = children["0"]
    assert complete.info.status == "FINISHED" and complete.data.params["learning_rate"] == "0.005"
    curve = mlflow.MlflowClient().get_metric_history(complete.info.run_id, "epoch_val_accuracy")
    assert [metric.step for metric in curve] == [1, 2]
    assert complete.data.metrics["val_accuracy"] == report["trial_list"][0]["value"]

    assert parent.info.status == "FINISHED" and parent.data.params["space.learning_rate.log"] == "True"
    assert parent.data.metrics["best_val_accuracy"] == report["best"]["val_accuracy"]
    assert parent.data.tags["best_params.learning_rate"] == str(report["best"]["params"]["learning_rate"])
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "study")}
    assert artifacts == {"study/optimization_history.png", "study/param_importances.png", "study/three_conv.json"}


def test_applying_the_best_trial_trains_its_very_model(project: Path, report: dict, tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(project / "params.yaml", params_file)
    config = load_params(params_file)
    assert apply_best(config, "three_conv", project, report, params_file)
    applied = load_params(params_file).variant("three_conv")
    assert applied.train.learning_rate == report["best"]["params"]["learning_rate"]
    data = load_tuning_data(project)
    trained = fit_variant(applied, data, WorkDir(tmp_path / "work", "test"), verbose=0)
    predicted = model_outputs(trained.model, data.x_val, 32).argmax(axis=1)
    assert float((predicted == data.y_val).mean()) == report["best"]["val_accuracy"]


def test_invalid_drawn_models_fail_with_their_reason_and_the_study_goes_on(project: Path) -> None:
    raw = read_params_file(project / "params.yaml")
    raw["models"]["three_conv"]["tune"] = {"kernel_size": [3, 7], "epochs": {"low": 1, "high": 2}}
    config = parse_params(raw)
    enqueue(config, project, {"kernel_size": 7, "epochs": 1})
    result = run_tune(config, "three_conv", project, trials=2, params_file=project / "params.yaml")
    first = result["trial_list"][0]
    assert first["state"] == "FAIL" and "kernel_size (7, 7) is larger than its 2x2 feature map" in first["fail_reason"]
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 2
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    failed = mlflow.search_runs(experiment_names=["cnn-tuning"], output_format="list",
                                filter_string=f"tags.study = '{result['study']}' and tags.trial = '0'")
    assert [run.info.status for run in failed] == ["FAILED"]
    assert "kernel_size (7, 7)" in failed[0].data.tags["fail_reason"]
