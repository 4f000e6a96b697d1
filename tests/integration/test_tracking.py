"""tracking.py against real MLflow stores: every param of a large variant is logged, and a registry
that cannot be asked is an error, never "not registered"."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pipeline import tracking
from pipeline.config import parse_params
from pipeline.model_files import TrainedModel
from pipeline.models import build_model


def _large_variant_params() -> dict:
    """A variant with 62 layers: about 140 params to log, well above MLflow's 100 per request."""
    layers = [{"type": "conv", "filters": 4, "kernel_size": 3, "activation": "relu"}]
    layers += [{"type": "dropout", "rate": 0.0} for _ in range(60)]
    layers += [{"type": "flatten"}]
    return {"models": {"deep": {"description": "many layers", "layers": layers}}}


def test_every_param_of_a_large_variant_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    variant = parse_params(_large_variant_params()).variant("deep")
    model = build_model(variant.layers, (28, 28, 1), 10, name="deep")
    trained = TrainedModel(model=model, history={"loss": [1.0, 0.5], "val_accuracy": [0.5, 0.6]}, summary="s",
                           training={"params": model.count_params()},
                           run={"train_seconds": 1.5, "fit_started_ms": 1_700_000_000_000,
                                "fit_ended_ms": 1_700_000_001_500})
    experiment_id = tracking.setup(tmp_path, "large")
    expected = tracking.flatten(variant.settings())
    assert len(expected) > 100
    logged = tracking.log_training_run(experiment_id, variant, trained, files=[],
                                       class_names=[str(digit) for digit in range(10)],
                                       tags={"git_commit": "c" * 40, "data_version": "d" * 32},
                                       ghost_run_file=tmp_path / "run_id",
                                       datasets=[tracking.DatasetRecord("train (3 images)", "d" * 32, "data/prepared",
                                                                        "training", {"split": "train"})])
    run = mlflow.MlflowClient().get_run(logged["run_id"])
    # The variant's settings, plus the model's size and the logged file's sha256.
    assert set(run.data.params) == set(expected) | {"model.params", "model_sha256"}
    assert {key: run.data.params[key] for key in expected} == expected
    assert run.data.params["variant.layers.60.rate"] == "0.0"
    history = mlflow.MlflowClient().get_metric_history(logged["run_id"], "epoch_val_accuracy")
    assert [(metric.step, metric.value) for metric in history] == [(1, 0.5), (2, 0.6)]
    assert run.data.metrics["train_seconds"] == 1.5
    # The run lasts as long as the fit, not as long as the logging after it (MLflow's Duration column).
    assert (run.info.start_time, run.info.end_time) == (1_700_000_000_000, 1_700_000_001_500)
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("train (3 images)", "d" * 12)
    assert {tag.key: tag.value for tag in dataset.tags}["mlflow.data.context"] == "training"


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A tracking server having a bad moment: every request answers 503."""

    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try again"}')

    do_GET = do_POST = do_PATCH = _answer  # noqa: N815 (http.server's names)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_registry_that_cannot_answer_is_not_an_empty_registry(unavailable_server: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: find_version swallowed every MlflowException and answered "not registered", so the
    stage registered a duplicate version of the same run after a server hiccup."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(unavailable_server)
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.find_version("mnist-cnn", "0123456789abcdef")


def test_a_registry_without_the_run_answers_none(tmp_path: Path) -> None:
    tracking.setup(tmp_path, "empty")
    assert tracking.find_version("mnist-cnn", "0123456789abcdef") is None
