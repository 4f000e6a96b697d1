"""The `evaluate` stage: test metrics, confusion matrix, curves, error galleries, Grad-CAM, filters.

`evaluate_model()` computes (returns dicts and figures); `write_evaluation()` is the file edge.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from pipeline import plots
from pipeline.config import EvaluateConfig, PipelineConfig
from pipeline.dataset import PreparedData, load_prepared, model_outputs, normalise
from pipeline.gradcam import class_activation_maps
from pipeline.io import read_json, write_json, write_text
from pipeline.layout import Layout
from pipeline.metrics import score
from pipeline.models import conv_layers

EVALUATION_ARTIFACTS = "evaluation"  # where a variant's MLflow run holds its reports and pictures


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    probabilities: np.ndarray  # test split, (N, num_classes)
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax outputs for uint8 `images` in float64, renormalised (float32 rounding leaves rows summing
    to 1 +- 1e-7)."""
    probabilities = model_outputs(model, images, batch_size).astype(np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def feature_maps(model: Any, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Activations of every Conv2D layer for one uint8 image (seed 002/003: what the filters see)."""
    import keras

    layers = conv_layers(model)
    if not layers:
        return []
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe.predict(normalise(image[np.newaxis]), verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [(layer.name, np.asarray(output[0])) for layer, output in zip(layers, outputs, strict=True)]


def evaluate_model(model: Any, data: PreparedData, history: dict[str, list[float]], config: EvaluateConfig,
                   variant: str) -> Evaluation:
    """Score a trained model on the test split and draw its pictures.

    Args:
        model: the trained Keras model.
        data: the prepared splits (test for metrics, validation for model selection).
        history: per-epoch training history (learning curves).
        config: the `evaluate` block of params.yaml.
        variant: name used in titles.

    Returns:
        Metrics, per-class scores, confusion matrix, test probabilities and figures.
    """
    probabilities = predict_probabilities(model, data.x_test, config.batch_size)
    predicted = probabilities.argmax(axis=1)
    val_predicted = predict_probabilities(model, data.x_val, config.batch_size).argmax(axis=1)
    metrics, per_class = score(data.y_val, val_predicted, data.y_test, probabilities, data.class_names)
    matrix = confusion_matrix(data.y_test, predicted, labels=list(range(data.num_classes)))
    confidence = probabilities[np.arange(len(predicted)), predicted]
    rows, cols = config.gallery_rows, config.gallery_cols
    gallery, shown = plots.error_gallery(data.x_test, data.y_test, predicted, confidence, data.class_names,
                                         rows=rows, cols=cols, title=f"{variant}: most confident mistakes")
    figures = {
        "error_gallery.png": gallery,
        "confusion_matrix.png": plots.confusion_matrix_figure(matrix, data.class_names),
        "learning_curves.png": plots.learning_curves_figure(history, title=f"{variant}: learning curves"),
    }
    pair = plots.most_confused_pair(data.y_test, predicted, data.num_classes)
    if pair is not None:
        true_class, predicted_class = pair
        candidates = np.flatnonzero((data.y_test == true_class) & (predicted == predicted_class))
        figures["confused_pair_gallery.png"], _ = plots.error_gallery(
            data.x_test, data.y_test, predicted, confidence, data.class_names, rows=rows, cols=cols,
            indices=candidates, title=(f"{variant}: most confused pair, {data.class_names[true_class]} "
                                       f"predicted as {data.class_names[predicted_class]}"))
    convolutions = conv_layers(model)
    if convolutions:
        kernels = np.asarray(convolutions[0].get_weights()[0])
        # The gallery's own tiles, so each heat map sits under the same title as its digit there.
        heat = class_activation_maps(model, normalise(data.x_test[shown]), predicted[shown])
        figures["error_gallery_gradcam.png"] = plots.gradcam_gallery(
            data.x_test, heat, shown, data.y_test, predicted, confidence, data.class_names, cols=cols,
            title=f"{variant}: Grad-CAM of the predicted class on the most confident mistakes")
        figures["filters.png"] = plots.filters_figure(kernels, title=f"{variant}: first conv layer filters")
        figures["feature_maps.png"] = plots.feature_maps_figure(
            feature_maps(model, data.x_test[0]), data.x_test[0],
            title=f"{variant}: feature maps of test image 0 (label {data.class_names[int(data.y_test[0])]})")
    return Evaluation(metrics=metrics, per_class=per_class, confusion=matrix, probabilities=probabilities,
                      figures=figures)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_evaluation(evaluation: Evaluation, data: PreparedData, history: dict[str, list[float]],
                     root: Path, variant: str) -> list[Path]:
    """Write the variant's metrics, CSVs for DVC plots and pictures (paths: pipeline/layout.py); the
    pictures alone in its evaluation directory, which DVC shows as image plots."""
    names = data.class_names
    layout = Layout(root)
    report_dir = layout.evaluation_dir(variant)
    written = [write_json(layout.metrics_file(variant), evaluation.metrics),
               write_json(layout.per_class_file(variant), evaluation.per_class)]
    written.append(write_text(layout.confusion_file(variant), _csv_text(
        ["true \\ predicted", *names],
        [[name, *map(int, row)] for name, row in zip(names, evaluation.confusion, strict=True)])))
    predicted = evaluation.probabilities.argmax(axis=1)
    written.append(write_text(layout.predictions_file(variant), _csv_text(
        ["actual", "predicted", "probability"],
        [[names[int(true)], names[int(guess)], round(float(evaluation.probabilities[index, guess]), 4)]
         for index, (true, guess) in enumerate(zip(data.y_test, predicted, strict=True))])))
    epochs = len(next(iter(history.values()), []))
    keys = [key for key in ("loss", "val_loss", "accuracy", "val_accuracy") if key in history]
    written.append(write_text(layout.curves_file(variant), _csv_text(
        ["epoch", *keys], [[epoch + 1, *(round(history[key][epoch], 6) for key in keys)]
                           for epoch in range(epochs)])))
    for file_name, figure in evaluation.figures.items():
        written.append(plots.save_figure(figure, report_dir / file_name))
    return written


def _score(config: PipelineConfig, name: str, root: Path, data: PreparedData) -> tuple[Any, Evaluation, list[Path]]:
    """Load a variant's model, score it, write its reports: (trained model, evaluation, files)."""
    from pipeline.model_files import load_trained

    trained = load_trained(Layout(root).model_dir(name))
    evaluation = evaluate_model(trained.model, data, trained.history, config.evaluate, config.variant(name).name)
    return trained, evaluation, write_evaluation(evaluation, data, trained.history, root, name)


def _log(config: PipelineConfig, name: str, root: Path, trained: Any, data: PreparedData,
         metrics: dict[str, float], files: list[Path], experiment_id: str | None) -> None:
    """Log the variant's MLflow run: its training (once per trained model) and this evaluation."""
    from pipeline import tracking

    layout = Layout(root)
    experiment_id = experiment_id or tracking.setup(root, config.mlflow.experiment_name)
    kept = (f"logging the run of {name} (its model and reports are kept in {layout.model_dir(name)} and "
            f"{layout.evaluation_dir(name)}; rerun the evaluate stage to log them)")
    with tracking.outage_reported(root, kept):
        run_id = training_run_id(config, name, root, trained, data, experiment_id)
        tracking.log_evaluation(run_id, metrics, files, artifact_dir=EVALUATION_ARTIFACTS)


def evaluate_variant(config: PipelineConfig, name: str, root: Path, track: bool = True,
                     data: PreparedData | None = None) -> dict[str, float]:
    """Evaluate one variant: score it, write its reports (pipeline/layout.py) and pictures, and log its
    MLflow run: the training (params, per-epoch metrics, model) and this evaluation (test metrics,
    pictures). `data` saves re-reading the prepared splits.
    """
    data = data if data is not None else load_prepared(Layout(root), labels_only=("train",))
    trained, evaluation, written = _score(config, name, root, data)
    if track:
        _log(config, name, root, trained, data, evaluation.metrics, written, None)
    return evaluation.metrics


def training_run_id(config: PipelineConfig, name: str, root: Path, trained: Any, data: PreparedData,
                    experiment_id: str) -> str:
    """The MLflow run of the training in models/<name>: the run logged for it before (an evaluate
    stage rerun, e.g. after an `evaluate` param changed), else a new run, logged now.

    The new run holds what the train stage recorded (reports/runs/<name>.json): the fit's start and
    end as the run's times, its seconds, git commit and the Prefect tags. A model restored from a DVC
    cache has no such record here; its run then names the current commit, whose code DVC vouches
    made it (the train stage's deps are unchanged), and has no fit times.
    """
    from pipeline import tracking
    from pipeline.lineage import git_commit

    layout = Layout(root)
    digest = trained.training["model_digest"]
    record_file = layout.run_record(name)
    record = read_json(record_file) if record_file.is_file() else {}
    fit_recorded = record.get("model_digest") == digest
    logged = None
    if fit_recorded and record.get("run_id"):
        logged = tracking.finished_training_run(record["run_id"])
    elif not fit_recorded:
        record = {}
        logged = tracking.newest_training_run(config.mlflow.experiment_name, digest)
    if logged is None:
        trained.run = {key: record[key] for key in ("train_seconds", "images_per_second", "fit_started_ms",
                                                    "fit_ended_ms", "system_metrics") if record.get(key) is not None}
        data_version = trained.training["data_version"]
        datasets = [tracking.DatasetRecord(name=f"{split} ({labels.size:,} images)", digest=data_version,
                                           source=str(layout.prepared_dir.relative_to(root)), context=context,
                                           tags={"split": split, "images": str(labels.size),
                                                 "classes": ", ".join(data.class_names)})
                    for split, context, labels in (("train", "training", data.y_train),
                                                   ("val", "validation", data.y_val))]
        tags = {"git_commit": record.get("git_commit") or git_commit(root), "data_version": data_version,
                "params_hash": trained.training["params_hash"], "model_digest": digest, **record.get("tags", {})}
        logged = tracking.log_training_run(
            experiment_id, config.variant(name), trained, files=[layout.history_file(name),
                                                                  layout.training_file(name)],
            class_names=data.class_names, tags=tags, ghost_run_file=layout.pending_run_file(name),
            datasets=datasets, model_file=layout.model_file(name))
        layout.pending_run_file(name).unlink(missing_ok=True)
    write_json(record_file, {**record, "variant": name, **logged})
    return logged["run_id"]


def run_evaluate(config: PipelineConfig, root: Path, variants: list[str] | None = None,
                 track: bool = True) -> dict[str, dict[str, float]]:
    """The `evaluate` stage: every variant (or `variants`) in one process, in params order.

    One process for all variants, because starting one costs more than evaluating a variant
    (starting Python and importing TensorFlow and MLflow: about 6 s on two cores, against 2 to 3 s
    of work; benchmarks/results.md). Drawing the pictures in a second process meanwhile was tried:
    the stage took 21-27 s with it and 17-22 s without, so it is not done.
    """
    from pipeline import tracking

    chosen = variants or list(config.models)
    for name in chosen:
        config.variant(name)  # unknown names fail before any work
    layout = Layout(root)
    data = load_prepared(layout, labels_only=("train",))  # the training split's labels name its MLflow dataset
    experiment_id = tracking.setup(root, config.mlflow.experiment_name) if track else None
    results: dict[str, dict[str, float]] = {}
    for number, name in enumerate(chosen, start=1):
        trained, evaluation, written = _score(config, name, root, data)
        results[name] = metrics = evaluation.metrics
        if track:
            _log(config, name, root, trained, data, metrics, written, experiment_id)
        print(f"[evaluate {number}/{len(chosen)}] {name}: test accuracy {metrics['test_accuracy']:.4f}, "
              f"loss {metrics['test_loss']:.4f}, {metrics['test_errors']} mistakes", flush=True)
    return results
