"""`dvc repro` end to end in a throwaway copy of the project, on 400 images and one epoch.

One module-scoped run (the slow part) is shared by the assertions below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.dataset import load_prepared, normalise
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
        pictures = {"error_gallery.png", "error_gallery_gradcam.png", "confused_pair_gallery.png",
                    "confusion_matrix.png", "learning_curves.png", "filters.png", "feature_maps.png"}
        # only pictures: the directory is DVC's image plots
        assert pictures <= {path.name for path in (reproduced / "reports" / "evaluation" / variant).iterdir()}
        assert {path.suffix for path in (reproduced / "reports" / "evaluation" / variant).iterdir()} == {".png"}
        for name in ("confusion_matrix.csv", "per_class.json"):
            assert (reproduced / "reports" / "scores" / variant / name).is_file(), f"{variant}/{name}"
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
    data = load_prepared(reproduced)
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
        cpu = tracking.get_metric_history(finished.info.run_id, "system/cpu_utilization_percentage")
        assert cpu and all(finished.info.start_time <= sample.timestamp <= finished.info.end_time + 1000
                           for sample in cpu)  # sampled during the fit (PIPELINE_SYSTEM_METRICS is on)
        record = json.loads(Layout(reproduced).run_record(variant).read_text())
        logged = mlflow.pyfunc.load_model(record["model_uri"])
        saved = load_model_checked(reproduced / "models" / variant / "model.keras")
        images = normalise(data.x_test[:20])
        answered = logged.predict(images)  # a class name and one probability per class, per image
        expected = saved.predict(images, verbose=0)
        np.testing.assert_allclose(answered[data.class_names].to_numpy(dtype=float), expected, rtol=1e-5, atol=1e-6)
        assert list(answered["class"]) == [data.class_names[index] for index in expected.argmax(axis=1)]


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


def test_plots_diff_shows_each_revisions_gallery_side_by_side(reproduced: Path, tmp_path: Path) -> None:
    """`dvc plots diff HEAD <experiment>` on the experiment of the test above (three_conv retrained with
    adam): the page holds both revisions' error gallery of three_conv, as two different images."""
    experiments = run(["dvc", "exp", "list", "--name-only"], reproduced).stdout.split()
    assert experiments, "the experiment of test_one_variant_change_reruns_only_that_variant"
    gallery = "reports/evaluation/three_conv/error_gallery.png"
    out = tmp_path / "diff"
    run(["dvc", "plots", "diff", "HEAD", experiments[-1], "--targets", gallery, "-o", str(out)], reproduced)
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2, page[:2000]
    shown = [out / source if not Path(source).is_absolute() else Path(source) for source in sources]
    assert all(picture.is_file() for picture in shown), sources
    assert shown[0].read_bytes() != shown[1].read_bytes()  # adam's model errs on other images
    for revision in ("HEAD", experiments[-1]):
        assert revision in page


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
