"""The `keras` source's success path, offline: Fashion-MNIST through Keras' real loader
(`keras.datasets.fashion_mnist.load_data`) from a pre-seeded cache ($KERAS_HOME/datasets/fashion-mnist/),
holding small IDX files made here, through the whole pipeline with Fashion-MNIST's class names."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources import FASHION_MNIST_CLASSES, read_bundled
from tests.conftest import make_project, run, tiny_params

pytestmark = pytest.mark.slow


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (magic 0x08, then the dimensions), gzip-compressed as Keras downloads it."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", size) for size in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def seed_keras_cache(keras_home: Path, train: int, test: int) -> None:
    """What the README tells an offline user to copy: the four Fashion-MNIST files in Keras' cache."""
    bundled = read_bundled()
    order = np.random.default_rng(5).permutation(bundled.y_train.size)
    images, labels = bundled.x_train[order, ..., 0], bundled.y_train[order]
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:train])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:train])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[train:train + test])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[train:train + test])


def test_fashion_mnist_from_a_seeded_keras_cache_through_the_pipeline(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras-home"
    seed_keras_cache(keras_home, train=500, test=120)
    params = tiny_params(("three_conv",))
    params["data"].update({"source": "keras", "keras_dataset": "fashion_mnist", "max_images": None})
    project = make_project(tmp_path / "project", params)
    # No network: the loader must find every file in the cache (a download would fail here).
    run(["dvc", "repro"], project, env={"KERAS_HOME": str(keras_home), "HTTPS_PROXY": "http://127.0.0.1:9",
                                        "HTTP_PROXY": "http://127.0.0.1:9"})
    ingested = json.loads((project / "reports" / "data" / "ingest.json").read_text())
    assert ingested["source"] == "keras.datasets.fashion_mnist" and ingested["class_names"] == FASHION_MNIST_CLASSES
    assert ingested["splits"]["train"]["images"] == 500 and ingested["splits"]["test"]["images"] == 120
    with (project / "reports" / "predictions" / "three_conv.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and {row["actual"] for row in rows} <= set(FASHION_MNIST_CLASSES)
    assert "Ankle boot" in {row["actual"] for row in rows}
    per_class = json.loads((project / "reports" / "scores" / "three_conv" / "per_class.json").read_text())
    assert sorted(per_class) == sorted(FASHION_MNIST_CLASSES)
    assert (project / "reports" / "evaluation" / "three_conv" / "error_gallery.png").stat().st_size > 0
