"""The registered model as `mlflow models serve` runs it: the `.keras` file behind a pyfunc that checks
its input first and answers with class names.

A request holds what a client has, in any batch size:

- PNG or JPEG images, base64 text in a column `image` (`dataframe_split`, `dataframe_records`,
  `inputs: {"image": [...]}`, or `inputs: [...]` of strings), read by `pipeline.images` as the
  pipeline reads image files: PNG/JPEG only, the trained size or refused (never resized), converted
  to the trained channels;
- pixel arrays (N, H, W, C), or (N, H, W) for one channel, of integers 0-255, divided by 255 here as
  the prepare stage does;
- pixel arrays of floats in [0, 1], as before this module read images (kept for existing clients).

Integers and floats are told apart by the JSON numbers themselves (MLflow parses `200` as int64 and
`200.0` or `0.5` as float64), never by their values: a float above 1 is refused, not guessed at.
A refusal is an MlflowException with INVALID_PARAMETER_VALUE, which the scoring server answers as
400 naming the problem (the row, the size expected and found). The answer is one row per image: the
predicted `class` and one probability column per class name. The file is loaded in Keras safe mode
after checking the sha256 recorded when the model was logged.

    mlflow models serve -m models:/mnist-cnn@champion --env-manager local -p 5001
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.dataset import normalise
from pipeline.errors import DataError
from pipeline.images import read_image
from pipeline.io import read_json

MODEL_ARTIFACT = "model"  # the key of the .keras file among the logged artifacts
CLASSES_ARTIFACT = "class_names"  # the key of the JSON list of class names, in output order
IMAGE_COLUMN = "image"
CLASS_COLUMN = "class"
SHOWN_PROBLEMS = 10  # bad rows named in one answer; a batch of 256 bad ones must not make a 256-line error
# Images per forward pass: a request of any size is run in slices of this many, bounding the memory of
# the activations (a 28x28 CNN: a few MB per slice).
PREDICT_SLICE = 256


def _refuse(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def output_columns(class_names: list[str]) -> list[str]:
    """The answer's columns: `class`, then one probability column per class name.

    Raises:
        ValueError: a name repeats or is `class` (two columns would have one name).
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names) or CLASS_COLUMN in names:
        raise ValueError(f"class names {names}: must be distinct and none may be {CLASS_COLUMN!r}, "
                         "as each names a column of the served model's answer")
    return [CLASS_COLUMN, *names]


def decode_images(encoded: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Base64 PNG/JPEG texts as uint8 images (N, H, W, C), read as the pipeline reads image files.

    Args:
        encoded: one base64 text per image.
        shape: one image's (height, width, channels), as the model was trained.

    Raises:
        MlflowException (400) naming every bad row (up to SHOWN_PROBLEMS) and what is wrong with it.
    """
    height, width, channels = shape
    images, problems = [], []
    for row, text in enumerate(encoded):
        if not isinstance(text, (str, bytes)):
            problems.append(f"row {row}: expected base64 text of a PNG/JPEG image, got {type(text).__name__}")
            continue
        try:
            content = base64.b64decode(text, validate=True)
            images.append(read_image(content, height, width, channels, name=f"row {row}"))
        except (binascii.Error, ValueError) as error:  # DataError is a ValueError
            hint = "; send the text after the data URI's 'base64,'" if str(text).startswith("data:") else ""
            problems.append(str(error) if isinstance(error, DataError) else
                            f"row {row}: not base64 text ({error}){hint}")
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        listed = "\n  ".join(problems[:SHOWN_PROBLEMS])
        raise _refuse(f"{len(problems)} of {len(encoded)} image(s) in column {IMAGE_COLUMN!r} cannot be "
                      f"classified:\n  {listed}{more}")
    return np.stack(images)


def _encoded_column(batch: Any) -> list[Any] | None:
    """The base64 texts when `batch` is a table or mapping of them (None: it is not), refusing other columns."""
    if isinstance(batch, pd.DataFrame | dict):
        columns = list(batch.columns if isinstance(batch, pd.DataFrame) else batch)
        if columns != [IMAGE_COLUMN]:
            raise _refuse(f"expected one column {IMAGE_COLUMN!r} of base64 PNG/JPEG images; got columns {columns}")
        return list(np.asarray(batch[IMAGE_COLUMN], dtype=object).reshape(-1))
    return None


def check_images(batch: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`batch` as float32 images (N, *shape) with values in [0, 1], or an MlflowException that MLflow's
    scoring server answers as 400 INVALID_PARAMETER_VALUE, saying what is expected.

    Args:
        batch: what the request held, as MLflow parsed it: a DataFrame or dict with a column `image` of
            base64 PNG/JPEG, or an array of strings (the same), of integers 0-255, or of floats in [0, 1].
        shape: one image's (height, width, channels), as the model was trained.

    Returns:
        float32 (N, height, width, channels) in [0, 1].
    """
    size = "x".join(map(str, shape))
    expected = (f"a batch of {size} (height x width x channels) images: base64 PNG/JPEG in a column "
                f"{IMAGE_COLUMN!r}, or pixels as integers 0-255 or floats in [0, 1]")
    encoded = _encoded_column(batch)
    if encoded is None:
        try:
            pixels = np.asarray(batch)
        except ValueError as error:  # ragged nested lists
            raise _refuse(f"expected {expected}: {error}") from None
        if pixels.ndim == 1 and pixels.dtype.kind in "USO" and pixels.size:
            encoded = list(pixels)
    if (len(encoded) if encoded is not None else len(pixels) if pixels.ndim else 1) == 0:
        raise _refuse(f"the batch is empty: expected {expected}, at least one")
    if encoded is not None:
        return normalise(decode_images(encoded, shape))

    shapes = f"(N, {', '.join(map(str, shape))})" + (f" or (N, {shape[0]}, {shape[1]})" if shape[2] == 1 else "")
    if pixels.ndim == len(shape) and shape[2] == 1:
        pixels = pixels[..., np.newaxis]
    if pixels.ndim != len(shape) + 1 or pixels.shape[1:] != tuple(shape):
        raise _refuse(f"expected {expected}, shaped {shapes}; got shape {np.shape(batch)}")
    if pixels.dtype.kind in "iu":  # JSON integers: 0-255 pixels, as the pipeline's sources hold them
        if pixels.min() < 0 or pixels.max() > 255:
            raise _refuse(f"expected integer pixels in 0-255; got values from {pixels.min()} to {pixels.max()}")
        return normalise(pixels.astype(np.uint8))
    if pixels.dtype.kind == "b":
        raise _refuse(f"expected {expected}; got true/false values")
    if pixels.dtype.kind != "f":  # text, or numbers mixed with text or null
        # The first value that is not a number; integers too large for int64 leave the array of objects.
        odd = next((value for value in pixels.flat if not isinstance(value, int | float | np.number)), pixels.flat[0])
        shown = repr(str(odd)) if isinstance(odd, str) else repr(odd)  # 'dark', not np.str_('dark')
        raise _refuse(f"expected {expected}; got a pixel array holding {shown}, not numbers of 0-255 or [0, 1]")
    images = pixels.astype(np.float64)
    if not np.isfinite(images).all():
        raise _refuse("expected floats in [0, 1]; got NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise _refuse(f"expected floats in [0, 1]; got values from {images.min():g} to {images.max():g}. Pixels "
                      "of 0-255 must be sent as integers (JSON 200, not 200.0) or divided by 255 first")
    return images.astype(np.float32)


def predictions_table(probabilities: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per image: the predicted `class` name, then the probability of each class."""
    columns = output_columns(class_names)
    table = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=columns[1:])
    table.insert(0, CLASS_COLUMN, [columns[1:][index] for index in np.argmax(probabilities, axis=1)])
    return table


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """A `.keras` classifier served by MLflow: class name and probabilities for each image of a checked batch."""

    def load_context(self, context: Any) -> None:
        from pipeline.model_files import load_model_checked

        config = context.model_config or {}
        self.model = load_model_checked(Path(context.artifacts[MODEL_ARTIFACT]), config.get("model_sha256"))
        classes = int(self.model.output_shape[-1])
        names_file = context.artifacts.get(CLASSES_ARTIFACT)
        # Models logged before class names were recorded answer with the class indices as names.
        self.class_names = [str(name) for name in (read_json(Path(names_file)) if names_file else range(classes))]
        if len(self.class_names) != classes:
            raise MlflowException(f"{names_file}: {len(self.class_names)} class names for a model of {classes} "
                                  "outputs")
        output_columns(self.class_names)

    # Not annotated: MLflow reads the annotations of `predict` as an input schema, and the input is
    # several shapes (see the module docstring), checked by `check_images`.
    def predict(self, context, model_input, params=None):
        """A table of `class` and one probability per class name for a batch that `check_images` accepts."""
        images = check_images(model_input, tuple(self.model.input_shape[1:]))
        # `predict_on_batch`, not `predict`: `predict` builds a data pipeline per call, 58 of the 59 ms a
        # single image took (benchmarks/serving.py); a slice is one forward pass, 1 ms for one image.
        probabilities = np.concatenate([np.asarray(self.model.predict_on_batch(images[start:start + PREDICT_SLICE]))
                                        for start in range(0, len(images), PREDICT_SLICE)])
        return predictions_table(probabilities, self.class_names)
