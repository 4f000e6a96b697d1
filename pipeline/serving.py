"""The registered model as `mlflow models serve` runs it: the `.keras` file behind a pyfunc that checks
its input first.

MLflow's own flavour served whatever numbers arrived: 0-255 pixels were taken as if they were 0-1
and answered with probability 1.0. `KerasClassifier` refuses input that is not a batch of images of
the trained shape with values in [0, 1], as a 400 that says what is expected; and it loads the file in
Keras safe mode after checking the sha256 recorded when the model was logged.

    mlflow models serve -m models:/mnist-cnn@champion --env-manager local -p 5001
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MODEL_ARTIFACT = "model"  # the key of the .keras file among the logged artifacts


def check_images(batch: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`batch` as float32 images (N, *shape) with values in [0, 1], or an MlflowException that MLflow's
    scoring server answers as 400 INVALID_PARAMETER_VALUE, saying what is expected.

    Args:
        batch: what the request held (MLflow has parsed the JSON into an array).
        shape: one image's (height, width, channels), as the model was trained.
    """
    expected = f"a batch of {'x'.join(map(str, shape))} (height x width x channels) images of floats in [0, 1]"
    try:
        images = np.asarray(batch, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MlflowException(f"expected {expected}: {error}", error_code=INVALID_PARAMETER_VALUE) from None
    if images.ndim != len(shape) + 1 or images.shape[1:] != tuple(shape):
        raise MlflowException(f"expected {expected}, shaped (N, {', '.join(map(str, shape))}); got shape "
                              f"{images.shape}", error_code=INVALID_PARAMETER_VALUE)
    if images.size and not np.isfinite(images).all():
        raise MlflowException(f"expected {expected}; got NaN or infinite values", error_code=INVALID_PARAMETER_VALUE)
    if images.size and (images.min() < 0 or images.max() > 1):
        raise MlflowException(
            f"expected {expected}; got values from {images.min():g} to {images.max():g}. Pixels of 0-255 "
            "must be divided by 255 first (the model was trained on [0, 1])", error_code=INVALID_PARAMETER_VALUE)
    return images.astype(np.float32)


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """A `.keras` classifier served by MLflow: class probabilities for each image of a checked batch."""

    def load_context(self, context: Any) -> None:
        from pipeline.model_files import load_model_checked

        config = context.model_config or {}
        self.model = load_model_checked(Path(context.artifacts[MODEL_ARTIFACT]), config.get("model_sha256"))

    # Not annotated: MLflow reads the annotations of `predict` as an input schema, and warns that `Any` is
    # none; the logged signature (N, H, W, C float32 images) is the schema.
    def predict(self, context, model_input, params=None):
        """Class probabilities (N, classes) for a batch that `check_images` accepts."""
        images = check_images(model_input, tuple(self.model.input_shape[1:]))
        return np.asarray(self.model.predict(images, verbose=0))
