"""Training on two hosts for real: two `python -m pipeline train` processes on loopback, each with its
own TF_CONFIG, fit one model under MultiWorkerMirroredStrategy (README, "Training on several hosts")."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.dataset import load_prepared, model_outputs
from pipeline.ingest import run_ingest
from pipeline.layout import Layout
from pipeline.model_files import load_trained
from pipeline.prepare import run_prepare
from tests.conftest import BIN, fit, make_project, tiny_params
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

VARIANT = "three_conv"
WORKERS = 2


def multi_worker_params() -> dict:
    params = tiny_params((VARIANT,))
    # 1000 images (200 test images: one point of accuracy is two images) and three epochs, so the two
    # fits are past the first steps' noise. No augmentation: each replica draws its own random transforms
    # for its half of a batch, which is another (equally valid) training than the single process's draws;
    # without them the two fits compute the same steps, up to the order of float sums.
    params["data"]["max_images"] = 1000
    params["train"].update({"epochs": 3, "distribution": "multi_worker",
                            "augment": {"rotation": 0.0, "translation": 0.0, "zoom": 0.0}})
    return params


def test_two_workers_train_one_model(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", multi_worker_params())
    config = load_params(project / "params.yaml")
    run_ingest(config, project)
    run_prepare(config, project)
    layout = Layout(project)

    addresses = [f"localhost:{free_port()}" for _ in range(WORKERS)]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    workers = [subprocess.Popen(
        [str(BIN / "python"), "-m", "pipeline", "train", VARIANT, "--no-track"], cwd=project,
        env={**env, "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                             "task": {"type": "worker", "index": index}})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(WORKERS)]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=300)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for index, (worker, output) in enumerate(zip(workers, outputs, strict=True)):
        assert worker.returncode == 0, f"worker {index}:\n{output[-4000:]}"

    # The chief published the model; the other worker trained the same one and left no files behind.
    training = json.loads(layout.training_file(VARIANT).read_text())
    assert training["replicas"] == WORKERS
    assert training["settings"]["train"]["distribution"] == "multi_worker"
    digest = re.search(r"worker 1 trained three_conv \(model_digest ([0-9a-f]{64})\)", outputs[1])
    assert digest, outputs[1][-2000:]
    assert digest.group(1) == training["model_digest"]  # every weight and optimizer variable, bit for bit
    assert not layout.worker_work_dir(VARIANT, 1).exists()
    assert not layout.work_dir(VARIANT).exists()

    # The same settings in one process: the same accuracy on the test split, within one point.
    data = load_prepared(layout)
    single = fit(load_params(project / "params.yaml", overrides={"train.distribution": "none"}), VARIANT, data,
                 tmp_path / "single")
    distributed = load_trained(layout.model_dir(VARIANT))

    def test_accuracy(model: object) -> float:
        predicted = model_outputs(model, data.x_test, 512).argmax(axis=1)
        return float((predicted == data.y_test).mean())

    accuracies = {"multi_worker": test_accuracy(distributed.model), "none": test_accuracy(single.model)}
    print(f"test accuracy on {len(data.y_test)} images: {accuracies}")
    assert abs(accuracies["multi_worker"] - accuracies["none"]) <= 0.01, accuracies
