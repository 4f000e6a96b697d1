"""Training for real on a few hundred images: determinism, resume after SIGKILL, a YAML-only variant."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import load_params
from pipeline.dataset import load_prepared
from pipeline.ingest import run_ingest
from pipeline.layout import Layout
from pipeline.model_files import load_trained
from pipeline.prepare import run_prepare
from tests.conftest import BIN, fit, make_project, tiny_params

pytestmark = pytest.mark.slow


def weights_digest(model: object) -> str:
    digest = hashlib.sha256()
    for array in model.get_weights():  # type: ignore[attr-defined]
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("training") / "project")
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    return project


def test_same_inputs_give_identical_weights(prepared_project: Path, tmp_path: Path) -> None:
    config = load_params(prepared_project / "params.yaml")
    data = load_prepared(prepared_project)
    first = fit(config, "three_conv", data, tmp_path / "first")
    second = fit(config, "three_conv", data, tmp_path / "second")
    other_seed = fit(config, "three_conv", data, tmp_path / "third", seed=config.seed + 1)
    assert weights_digest(first.model) == weights_digest(second.model)
    assert first.history == second.history
    assert weights_digest(first.model) != weights_digest(other_seed.model)


def test_long_epochs_report_progress_without_changing_the_fit(prepared_project: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """With one line per epoch (verbose 2, logs of DVC and Prefect), an epoch longer than
    PROGRESS_SECONDS (here 0) prints its batches done and images/s; the weights are the silent fit's."""
    from pipeline import train
    from pipeline.checkpoint import WorkDir

    config = load_params(prepared_project / "params.yaml")
    data = load_prepared(prepared_project)
    silent = fit(config, "three_conv", data, tmp_path / "silent")
    monkeypatch.setattr(train, "PROGRESS_SECONDS", 0.0)
    capsys.readouterr()
    reported = train.fit_variant(config.variant("three_conv"), data, WorkDir(tmp_path / "reported", "test"), verbose=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[train three_conv] epoch 1/")]
    steps = int(np.ceil(len(data.y_train) / config.variant("three_conv").train.batch_size))
    assert lines and lines[-1].split(": ")[1].startswith(f"{steps:,}/{steps:,} batches, ")
    assert lines[-1].endswith(" images/s")
    assert weights_digest(reported.model) == weights_digest(silent.model)


def test_yaml_only_variant_builds_and_trains(prepared_project: Path, tmp_path: Path) -> None:
    params = tiny_params()
    params["models"]["my_variant"] = {"layers": [
        {"type": "conv", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "pool"},
        {"type": "flatten"},
    ]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    config = load_params(tmp_path / "params.yaml")
    data = load_prepared(prepared_project)
    result = fit(config, "my_variant", data, tmp_path / "work")
    assert result.training["params"] == (3 * 3 * 1 + 1) * 4 + 13 * 13 * 4 * 10 + 10
    assert len(result.history["val_accuracy"]) == 1


def test_killed_training_resumes_from_its_last_epoch(prepared_project: Path) -> None:
    params = yaml.safe_load((prepared_project / "params.yaml").read_text())
    # Small batches: epochs of about half a second, so the kill below lands inside an epoch.
    params["train"].update({"epochs": 40, "early_stopping_patience": 40, "batch_size": 8})
    (prepared_project / "params.yaml").write_text(yaml.safe_dump(params))
    backup = prepared_project / ".cache" / "train" / "three_conv" / "backup"
    command = [str(BIN / "python"), "-m", "pipeline", "train", "three_conv", "--no-track"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=prepared_project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    history_file = backup.parent / "history.csv"

    def epochs_done() -> int:
        return len(history_file.read_text().splitlines()) - 1 if history_file.is_file() else 0

    def wait_for_epochs(count: int) -> float:
        while epochs_done() < count:
            assert time.monotonic() < deadline, f"no {count} epochs within 300 s"
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.02)
        return time.monotonic()

    # kill -9 half an epoch after the second one ended (no chance to clean up): inside epoch 3, with
    # epoch 2 backed up, not while Keras writes the backup (that case is test_training_faults').
    first = wait_for_epochs(1)
    time.sleep((wait_for_epochs(2) - first) / 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (prepared_project / "models" / "three_conv" / "training.json").exists()

    # Same command, same params: the same job, which must continue where the kill left it.
    rerun = subprocess.Popen(command, cwd=prepared_project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "resuming from the backup" in output
    info = {**json.loads(Layout(prepared_project).training_file("three_conv").read_text()),
            **json.loads(Layout(prepared_project).run_record("three_conv").read_text())}
    assert info["resumed_from_epoch"] >= 2
    trained = load_trained(prepared_project / "models" / "three_conv")
    assert len(trained.history["loss"]) == info["epochs_run"]
    assert info["epochs_run"] == info["resumed_from_epoch"] + info["epochs_run_this_process"]
    assert not backup.parent.exists()  # the work directory is removed after success


def test_multi_seed_repeats_feed_a_confidence_interval(prepared_project: Path) -> None:
    from pipeline.metrics import ci95
    from pipeline.train import run_train

    params = yaml.safe_load((prepared_project / "params.yaml").read_text())
    params["train"].update({"epochs": 1, "seeds": 3})
    (prepared_project / "params.yaml").write_text(yaml.safe_dump(params))
    info = run_train(load_params(prepared_project / "params.yaml"), "relu_layers", prepared_project,
                        track=False)
    repeats = info["seed_repeats"]
    assert [repeat["seed"] for repeat in repeats] == [42, 43, 44]
    assert all(0 <= repeat["val_accuracy"] <= 1 for repeat in repeats)
    mean, half_width = ci95([repeat["val_accuracy"] for repeat in repeats])
    assert min(r["val_accuracy"] for r in repeats) <= mean <= max(r["val_accuracy"] for r in repeats)
    assert half_width >= 0
