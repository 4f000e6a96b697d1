"""Classify image files with a registered model (default: the `champion` alias)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.config import PipelineConfig
from pipeline.dataset import normalise
from pipeline.errors import DataError, ModelFileError, RegistryError
from pipeline.model_files import load_model_checked
from pipeline.sources import IMAGE_SUFFIXES, read_image

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def load_registered_model(model_uri: str) -> tuple[object, dict[str, str]]:
    """Download a registry model, check its sha256 against the one recorded at registration, load it
    in Keras safe mode. Returns the model and the version's tags."""
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
        return load_model_checked(model_file, tags["model_sha256"]), tags


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files in `folder`, sorted, each with a readable image header.

    Raises DataError naming the folder (missing, no images) or the first file that is not an image;
    cheap (headers only), so bad input fails before a model is downloaded and loaded.
    """
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no .png/.jpg/.jpeg files")
    for path in files:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable PNG/JPEG image ({error})") from None
    return files


def read_images(folder: Path, height: int, width: int, channels: int) -> tuple[list[Path], np.ndarray]:
    """Every PNG/JPEG in `folder` as float32 (N, H, W, C) in [0, 1]; names the file that is wrong."""
    files = image_files(folder)
    images = np.stack([read_image(path, height, width, channels) for path in files])
    return files, normalise(images)


def predict_folder(config: PipelineConfig, folder: Path, root: Path, model_uri: str | None = None) -> pd.DataFrame:
    """A table of file, predicted class and its probability, one row per image."""
    image_files(folder)  # a missing folder, no images or a non-image fail before the model is downloaded
    tracking.setup(root, config.mlflow.experiment_name)
    model_uri = model_uri or f"models:/{config.registration.model_name}@champion"
    model, tags = load_registered_model(model_uri)
    height, width, channels = model.input_shape[1:]
    files, images = read_images(folder, height, width, channels)
    probabilities = np.asarray(model.predict(images, verbose=0))
    class_names = json.loads(tags["class_names"]) if "class_names" in tags else None
    predicted = probabilities.argmax(axis=1)
    return pd.DataFrame({
        "file": [path.name for path in files],
        "class": [class_names[index] if class_names else str(index) for index in predicted],
        "probability": probabilities[np.arange(len(files)), predicted].round(4),
    })
