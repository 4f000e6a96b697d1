"""One trial of a hyperparameter study: the settings drawn from the search space, made into a `Variant`,
fitted by `fit_variant` and scored on the validation split.

Optuna's `trial.suggest_*` draw the settings (`variant_for_trial`); a drawn model that cannot be built
(a kernel larger than its feature map) is refused before any fit and ends the trial as FAIL with the
reason, and the study goes on. Each epoch's validation accuracy is reported to the pruner by
optuna-integration's `KerasPruningCallback` (checked with Keras 3: it raises `TrialPruned` from
`on_epoch_end`, which leaves `model.fit` as any exception does).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.checkpoint import WorkDir
from pipeline.config import Variant
from pipeline.dataset import model_outputs
from pipeline.errors import ParamsError
from pipeline.layers import ConvLayer, DenseLayer, DropoutLayer, check_model_size, infer_shapes
from pipeline.layout import Layout
from pipeline.search_space import SearchSpace

if TYPE_CHECKING:
    import optuna

    from pipeline.dataset import PreparedData

# What the pruner watches, and what a trial's value is (of the trained model, as the pipeline chooses).
METRIC = "val_accuracy"


class InvalidTrialError(ParamsError):
    """The drawn settings make a model that cannot be built; the trial fails, the study goes on."""


def variant_for_trial(trial: Any, base: Variant, space: SearchSpace, input_shape: tuple[int, ...],
                      num_classes: int) -> Variant:
    """Draw the settings of `space` with `trial.suggest_*` and return `base` with them applied.

    Args:
        trial: an `optuna.Trial` (or `optuna.trial.FixedTrial` to rebuild a finished trial's variant).
        base: the variant as params.yaml resolves it.
        space: its search space.
        input_shape: (height, width, channels) of the prepared images.
        num_classes: the classifier head's size.

    Returns:
        The trial's variant (same name and seed as `base`).

    Raises:
        InvalidTrialError: the drawn layers do not fit the images (the message names the layer).
    """
    train: dict[str, Any] = {}
    if space.learning_rate:
        train["learning_rate"] = trial.suggest_float("learning_rate", space.learning_rate.low,
                                                     space.learning_rate.high, log=space.learning_rate.log)
    for key in ("batch_size", "optimizer", "lr_schedule"):
        if getattr(space, key):
            train[key] = trial.suggest_categorical(key, getattr(space, key))
    if space.epochs:
        train["epochs"] = trial.suggest_int("epochs", space.epochs.low, space.epochs.high)
    augment = {key: trial.suggest_float(key, strength.low, strength.high, log=strength.log)
               for key in ("rotation", "translation", "zoom") if (strength := getattr(space, key))}
    if augment:
        train["augment"] = base.train.augment.model_copy(update=augment)
    filters_scale = trial.suggest_categorical("filters_scale", space.filters_scale) if space.filters_scale else None
    units_scale = trial.suggest_categorical("units_scale", space.units_scale) if space.units_scale else None
    kernel_size = trial.suggest_categorical("kernel_size", space.kernel_size) if space.kernel_size else None
    layers = []
    for index, layer in enumerate(base.layers):
        update: dict[str, Any] = {}
        if isinstance(layer, ConvLayer) and filters_scale is not None:
            update["filters"] = max(1, round(layer.filters * filters_scale))
        if isinstance(layer, ConvLayer) and kernel_size is not None:
            update["kernel_size"] = kernel_size
        if isinstance(layer, DenseLayer) and units_scale is not None:
            update["units"] = max(1, round(layer.units * units_scale))
        if isinstance(layer, DropoutLayer) and space.dropout:
            # One rate per dropout layer, named after its index in the variant's `layers` list.
            update["rate"] = trial.suggest_float(f"dropout_{index}", space.dropout.low, space.dropout.high,
                                                 log=space.dropout.log)
        layers.append(layer.model_copy(update=update) if update else layer)
    variant = base.model_copy(update={"train": base.train.model_copy(update=train), "layers": tuple(layers)})
    where = f"models.{base.name}.layers"
    try:
        infer_shapes(variant.layers, input_shape, where=where)
        check_model_size(variant.layers, input_shape, num_classes, where=where)
    except ValueError as error:
        raise InvalidTrialError(f"the drawn settings make an invalid model: {error}") from None
    return variant


def process_identity() -> dict[str, Any]:
    """This process as a trial records it: a rerun on the same host can tell whether it still runs."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def process_is_gone(identity: dict[str, Any]) -> bool:
    """True when the process `identity` names ran on this host and has ended (a reused pid is another)."""
    import psutil

    if identity.get("host") != socket.gethostname():
        return False  # another machine's: only its missing heartbeats tell
    try:
        return abs(psutil.Process(int(identity["pid"])).create_time() - float(identity["pid_started"])) > 1.0
    except psutil.NoSuchProcess:
        return True


class TrialRunner:
    """The objective of a study (`runner(trial)` -> validation accuracy) and its after-trial callback.

    Args:
        base: the variant as params.yaml resolves it.
        space: its search space.
        data: train and validation splits (the test split is not loaded).
        layout: the project's paths (each trial's work directory).
        study_name: the study (names the trials' work directories).
        on_trial_end: called with each finished trial and its per-epoch history.
    """

    def __init__(self, base: Variant, space: SearchSpace, data: PreparedData, layout: Layout, study_name: str,
                 on_trial_end: Callable[[optuna.trial.FrozenTrial, dict[str, Any]], None]) -> None:
        self.base, self.space, self.data, self.layout = base, space, data, layout
        self.study_name = study_name
        self.on_trial_end = on_trial_end
        self.facts: dict[int, dict[str, Any]] = {}
        self.identity = process_identity()

    def __call__(self, trial: optuna.Trial) -> float:
        import keras
        from optuna_integration import KerasPruningCallback

        from pipeline.train import fit_variant, read_history

        trial.set_user_attr("process", self.identity)
        try:
            variant = variant_for_trial(trial, self.base, self.space, self.data.input_shape, self.data.num_classes)
        except InvalidTrialError as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        work = WorkDir(self.layout.trial_work_dir(self.study_name, trial.number), f"trial-{trial.number}")
        shutil.rmtree(work.path, ignore_errors=True)
        try:
            trained = fit_variant(variant, self.data, work, verbose=0,
                                  callbacks=[KerasPruningCallback(trial, METRIC)])
            predicted = model_outputs(trained.model, self.data.x_val, 512).argmax(axis=1)
            value = float((predicted == self.data.y_val).mean())
            trial.set_user_attr("epochs_run", trained.training["epochs_run"])
        finally:
            self.facts[trial.number] = {"history": read_history(work.history) if work.history.is_file() else {}}
            shutil.rmtree(work.path, ignore_errors=True)
            keras.backend.clear_session()  # a long study builds many models in this process
        return value

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial of this process: hand the trial on with its facts."""
        self.on_trial_end(trial, self.facts.pop(trial.number, {}))
