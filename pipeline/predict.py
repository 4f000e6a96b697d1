"""Classify image files with a registered model (default: the `champion` alias).

Every file is checked first, by its header alone (readable image, the size the model was trained on):
bad files are all reported before a model is downloaded or TensorFlow started, and with
`skip_bad` the others are classified anyway.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.config import PipelineConfig
from pipeline.dataset import normalise
from pipeline.errors import DataError, ModelFileError, RegistryError
from pipeline.images import IMAGE_SUFFIXES, check_image_header, read_image
from pipeline.model_files import load_model_checked

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class Predictions:
    """What `predict_folder` returns: the table, which model answered, and the files it skipped."""

    table: pd.DataFrame
    model: str  # e.g. "mnist-cnn v3 (models:/mnist-cnn@champion)"
    skipped: list[str] = field(default_factory=list)


def load_registered_model(model_uri: str) -> tuple[object, dict[str, str], str]:
    """Download a registry model, check its sha256 against the one recorded at registration, load it
    in Keras safe mode. Returns the model, the version's tags and the version number."""
    match = REGISTRY_URI.match(model_uri)
    if not match:
        raise RegistryError(f"model URI {model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name = match["name"]
    version = match["version"] or tracking.alias_version(name, match["alias"])
    if version is None:
        raise RegistryError(f"registered model {name!r} has no alias {match['alias']!r}; run the register stage first")
    tags = tracking.version_tags(name, version)
    if "model_sha256" not in tags:
        raise ModelFileError(f"{name} v{version} has no recorded model_sha256 tag; refusing to load an "
                             "unverified model")
    with tempfile.TemporaryDirectory() as scratch:
        model_file = tracking.download_model_file(f"models:/{name}/{version}", Path(scratch))
        return load_model_checked(model_file, tags["model_sha256"]), tags, version


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files in `folder`, sorted; DataError naming the folder when it is missing or holds none."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    try:
        files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    except PermissionError:
        raise DataError(f"{folder}: permission denied; the user running predict must be able to read it") from None
    if not files:
        raise DataError(f"{folder} holds no .png/.jpg/.jpeg files")
    return files


def check_files(files: list[Path], height: int, width: int) -> dict[Path, str]:
    """Each file's problem judged from its header (unreadable, not an image, wrong or bomb size)."""
    problems = {path: check_image_header(path, height, width) for path in files}
    return {path: problem for path, problem in problems.items() if problem}


def read_images(files: list[Path], height: int, width: int, channels: int) -> np.ndarray:
    """The files as float32 (N, H, W, C) in [0, 1]; DataError naming a file that is wrong."""
    return normalise(np.stack([read_image(path, height, width, channels) for path in files]))


def predict_folder(config: PipelineConfig, folder: Path, root: Path, model_uri: str | None = None,
                   skip_bad: bool = False) -> Predictions:
    """Classify every image of `folder`: a table of file, predicted class and its probability.

    Args:
        config: the params; `data.image_height/image_width/channels` is the size every file must have.
        folder: the images.
        root: the project (its MLflow store unless MLFLOW_TRACKING_URI is set).
        model_uri: default `models:/<register.model_name>@champion`.
        skip_bad: classify the good files and list the bad ones, instead of refusing the batch.

    Raises:
        DataError listing every bad file (without `skip_bad`, or when no file is good), before any
        model is downloaded.
    """
    height, width, channels = config.data.image_height, config.data.image_width, config.data.channels
    files = image_files(folder)
    problems = check_files(files, height, width)
    if problems and (not skip_bad or len(problems) == len(files)):
        listed = "\n  ".join(problems.values())
        advice = "" if skip_bad else "; pass --skip-bad to classify the others"
        raise DataError(f"{len(problems)} of {len(files)} file(s) in {folder} cannot be classified{advice}:\n"
                        f"  {listed}")
    good = [path for path in files if path not in problems]
    tracking.setup(root, config.mlflow.experiment_name)
    model_uri = model_uri or f"models:/{config.registration.model_name}@champion"
    model, tags, version = load_registered_model(model_uri)
    if tuple(model.input_shape[1:]) != (height, width, channels):
        raise DataError(f"{model_uri} (v{version}) takes images of {tuple(model.input_shape[1:])} (H, W, C), but "
                        f"params declare {(height, width, channels)} (data.image_height/image_width/channels)")
    probabilities = np.asarray(model.predict(read_images(good, height, width, channels), verbose=0))
    class_names = json.loads(tags["class_names"]) if "class_names" in tags else None
    predicted = probabilities.argmax(axis=1)
    table = pd.DataFrame({
        "file": [path.name for path in good],
        "class": [class_names[index] if class_names else str(index) for index in predicted],
        "probability": probabilities[np.arange(len(good)), predicted].round(4),
    })
    name = REGISTRY_URI.match(model_uri)["name"]
    return Predictions(table=table, model=f"{name} v{version} ({model_uri})", skipped=list(problems.values()))
