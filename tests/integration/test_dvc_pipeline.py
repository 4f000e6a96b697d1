"""`dvc repro` end to end in a throwaway copy of the project, on 400 images and one epoch.

One module-scoped run (the slow part) is shared by the assertions below.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.dataset import load_prepared
from pipeline.layout import Layout
from pipeline.model_files import load_model_checked
from tests.conftest import TINY_VARIANTS, make_project, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("dvc") / "project")
    run(["dvc", "repro"], project, env={"PIPELINE_RUN_GROUP": "test-group"})
    return project


def client(project: Path) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_every_report_is_written(reproduced: Path) -> None:
    for name in ("ingest.json", "prepare.json", "samples.png", "class_histogram.png"):
        assert (reproduced / "reports" / "data" / name).is_file(), name
    for variant in TINY_VARIANTS:
        for name in ("error_gallery.png", "error_gallery_gradcam.png", "confused_pair_gallery.png",
                     "confusion_matrix.png", "confusion_matrix.csv", "learning_curves.png", "filters.png",
                     "feature_maps.png", "per_class.json"):
            assert (reproduced / "reports" / "evaluation" / variant / name).is_file(), f"{variant}/{name}"
        metrics = json.loads((reproduced / "reports" / "metrics" / f"{variant}.json").read_text())
        assert 0.1 < metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
        assert (reproduced / "reports" / "curves" / f"{variant}.csv").read_text().startswith("epoch,")
        assert (reproduced / "reports" / "predictions" / f"{variant}.csv").read_text().startswith("actual,")
    board = (reproduced / "reports" / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("rank,variant,val_accuracy") and len(board) == 1 + len(TINY_VARIANTS)


def test_mlflow_runs_have_params_metrics_tags_and_a_loadable_model(reproduced: Path) -> None:
    tracking = client(reproduced)
    experiment = tracking.get_experiment_by_name("cnn-variants")
    runs = tracking.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["variant"] for run in runs) == sorted(TINY_VARIANTS)  # one run per variant
    data = load_prepared(reproduced / "data" / "prepared")
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())
    prepared_md5 = next(out["md5"] for out in lock["stages"]["prepare"]["outs"] if out["path"] == "data/prepared")
    for finished in runs:
        variant = finished.data.tags["variant"]
        assert finished.info.status == "FINISHED"
        assert finished.data.tags["data_version"] == prepared_md5  # the md5 DVC recorded
        assert finished.data.tags["run_group"] == "test-group"
        assert len(finished.data.tags["git_commit"]) >= 40 and finished.data.tags["params_hash"]
        assert finished.data.params["train.epochs"] == "1" and finished.data.params["variant.name"] == variant
        history = tracking.get_metric_history(finished.info.run_id, "epoch_val_accuracy")
        assert [metric.step for metric in history] == [1]
        assert "test_accuracy" in finished.data.metrics
        record = json.loads(Layout(reproduced).run_record(variant).read_text())
        logged = mlflow.pyfunc.load_model(record["model_uri"])
        saved = load_model_checked(reproduced / "models" / variant / "model.keras")
        np.testing.assert_allclose(logged.predict(data.x_test[:20]),
                                   saved.predict(data.x_test[:20], verbose=0), rtol=1e-5, atol=1e-6)


def test_registered_version_with_aliases_and_lineage(reproduced: Path) -> None:
    tracking = client(reproduced)
    decision = json.loads((reproduced / "reports" / "registry.json").read_text())
    version = tracking.get_model_version("mnist-cnn", decision["version"])
    assert decision["promoted"] is True and decision["previous_champion"] is None  # first, above 0.3
    assert tracking.get_model_version_by_alias("mnist-cnn", "champion").version == version.version
    assert tracking.get_model_version_by_alias("mnist-cnn", "challenger").version == version.version
    for tag in ("run_id", "git_commit", "data_version", "params_hash", "model_sha256"):
        assert version.tags[tag], tag
    assert "## Lineage" in (reproduced / "reports" / "model_card.md").read_text()
    best = (reproduced / "reports" / "leaderboard.csv").read_text().splitlines()[1].split(",")[1]
    assert decision["variant"] == best


def test_dvc_metrics_and_plots_render(reproduced: Path) -> None:
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced).stdout)
    workspace = next(iter(metrics.values()))["data"]  # one entry: the workspace
    assert workspace["reports/metrics/three_conv.json"]["data"]["test_accuracy"] > 0
    plots = json.loads(run(["dvc", "plots", "show", "--json"], reproduced).stdout)
    assert not plots.get("errors")
    rendered = set(plots["data"])
    assert {f"reports/curves/{variant}.csv" for variant in TINY_VARIANTS} <= rendered
    assert {f"reports/predictions/{variant}.csv" for variant in TINY_VARIANTS} <= rendered


def _commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    if run(["git", "status", "--porcelain"], project).stdout.strip():
        run(["git", "commit", "-q", "-m", message], project)


def test_forced_repro_of_a_clean_clone_changes_nothing_and_is_not_dirty(reproduced: Path, tmp_path: Path) -> None:
    """Every DVC output is byte-reproducible, so rerunning every stage in a fresh clone rewrites no
    git-tracked file (dvc.lock, metrics, leaderboard, data reports), and the runs' lineage names the
    clean commit, not `<sha>-dirty`."""
    _commit_all(reproduced, "pipeline outputs")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(reproduced), str(clone)], tmp_path)
    result = run(["dvc", "repro", "--force"], clone)
    assert run(["git", "status", "--porcelain"], clone).stdout == "", result.stdout[-3000:]
    head = run(["git", "rev-parse", "HEAD"], clone).stdout.strip()
    tracking = client(clone)
    runs = tracking.search_runs([tracking.get_experiment_by_name("cnn-variants").experiment_id])
    assert len(runs) == len(TINY_VARIANTS)
    assert {found.data.tags["git_commit"] for found in runs} == {head}
    decision = json.loads((clone / "reports" / "registry.json").read_text())
    assert decision["git_commit"] == head
    for variant in TINY_VARIANTS:  # the same model, byte for byte, as the original run
        assert (clone / "models" / variant / "model.keras").read_bytes() == (
            reproduced / "models" / variant / "model.keras").read_bytes()


def test_second_repro_does_nothing(reproduced: Path) -> None:
    result = run(["dvc", "repro"], reproduced)
    assert "Running stage" not in result.stdout
    assert run(["dvc", "status"], reproduced).stdout.strip() == "Data and pipelines are up to date."


def test_one_variant_change_reruns_only_that_variant(reproduced: Path) -> None:
    tracking = client(reproduced)
    experiment = tracking.get_experiment_by_name("cnn-variants")
    before = len(tracking.search_runs([experiment.experiment_id]))
    result = run(["dvc", "exp", "run", "-S", "models.three_conv.train.optimizer=adam"], reproduced)
    assert "Running stage 'train@three_conv'" in result.stdout
    assert "Running stage 'train@relu_layers'" not in result.stdout
    assert "Stage 'train@relu_layers' didn't change, skipping" in result.stdout
    assert len(tracking.search_runs([experiment.experiment_id])) == before + 1
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], reproduced).stdout
    assert "models.three_conv.train.optimizer" in shown and "reports/metrics/three_conv.json:test_accuracy" in shown


def test_push_then_pull_into_a_fresh_clone(reproduced: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(remote)], reproduced)
    _commit_all(reproduced, "pipeline outputs")
    run(["dvc", "push"], reproduced)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(reproduced), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(remote)], clone)
    run(["dvc", "pull"], clone)
    from pipeline.lineage import dvc_md5

    for path in ("data/prepared", "data/raw", "models/three_conv"):
        assert dvc_md5(clone / path) == dvc_md5(reproduced / path), path
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
