"""The `keras` source offline, through Keras' real loader in the pipeline's own processes.

Success: Fashion-MNIST (`keras.datasets.fashion_mnist.load_data`) from a pre-seeded cache
($KERAS_HOME/datasets/fashion-mnist/) holding small IDX files made here, through the whole pipeline
with Fashion-MNIST's class names. That works because Keras checks no hash for those four files (a
file that exists is used as is); it does check mnist.npz's sha256, so a made-up MNIST cannot be
seeded, and the failure tests show what an offline user sees then and with an empty cache.
KERAS_HOME is given to the subprocesses: Keras reads it once, when it is imported.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources import FASHION_MNIST_CLASSES, read_bundled
from tests.conftest import make_project, run, tiny_params

pytestmark = pytest.mark.slow

# Nothing listens on port 9 (discard): a download attempt fails at once, with or without network here.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


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
    run(["dvc", "repro"], project, env={"KERAS_HOME": str(keras_home), **OFFLINE})
    ingested = json.loads((project / "reports" / "data" / "ingest.json").read_text())
    assert ingested["source"] == "keras.datasets.fashion_mnist" and ingested["class_names"] == FASHION_MNIST_CLASSES
    assert ingested["splits"]["train"]["images"] == 500 and ingested["splits"]["test"]["images"] == 120
    with (project / "reports" / "predictions" / "three_conv.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and {row["actual"] for row in rows} <= set(FASHION_MNIST_CLASSES)
    assert "Ankle boot" in {row["actual"] for row in rows}
    per_class = json.loads((project / "reports" / "scores" / "three_conv" / "per_class.json").read_text())
    assert sorted(per_class) == sorted(FASHION_MNIST_CLASSES)
    gallery_titles = error_gallery_titles(project, "three_conv")
    assert gallery_titles, "the gallery shows no mistakes; one epoch on 500 images should make some"
    mistakes = {(row["actual"], row["predicted"]) for row in rows if row["actual"] != row["predicted"]}
    for title in gallery_titles:
        match = re.fullmatch(r"Label (.+) \| Predict (.+)\np=[0-9.]+", title)
        assert match and match.groups() in mistakes, f"{title!r} is not a Fashion-MNIST mistake of the test split"


def error_gallery_titles(project: Path, variant: str) -> list[str]:
    """The tile titles of the evaluate stage's error gallery PNG.

    The PNG holds no text, so the gallery is drawn again by the stage's own `evaluate_model` from the
    trained model and prepared splits the pipeline wrote; it must save to the very bytes the stage
    wrote, which shows these titles are the ones in the picture.
    """
    from pipeline.config import load_params
    from pipeline.dataset import load_prepared
    from pipeline.evaluate import evaluate_model
    from pipeline.layout import Layout
    from pipeline.model_files import load_trained
    from pipeline.plots import save_figure

    layout = Layout(project)
    config = load_params(project / "params.yaml")
    trained = load_trained(layout.model_dir(variant))
    evaluation = evaluate_model(trained.model, load_prepared(layout), trained.history,
                                config.evaluate, config.variant(variant).name)
    gallery = evaluation.figures["error_gallery.png"]
    redrawn = save_figure(gallery, project / "redrawn_error_gallery.png")
    written = layout.evaluation_dir(variant) / "error_gallery.png"
    assert redrawn.read_bytes() == written.read_bytes(), f"{written} is not the gallery drawn again"
    return [axes.get_title() for axes in gallery.axes if axes.get_title()]


def _ingest_offline(tmp_path: Path, keras_dataset: str, keras_home: Path) -> tuple[Path, str]:
    """`python -m pipeline ingest` of a keras data set with downloads blocked; (project, its output),
    after checking that it failed naming the data set."""
    params = tiny_params(("three_conv",))
    params["data"].update({"source": "keras", "keras_dataset": keras_dataset, "download_timeout_seconds": 5})
    project = make_project(tmp_path / "project", params)
    failed = run(["python", "-m", "pipeline", "ingest"], project, check=False,
                 env={"KERAS_HOME": str(keras_home), **OFFLINE})
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and f"could not load keras.datasets.{keras_dataset}" in output, output
    return project, output


def test_an_empty_keras_cache_offline_fails_naming_it_and_what_to_do(tmp_path: Path) -> None:
    keras_home = tmp_path / "keras-home"
    project, output = _ingest_offline(tmp_path, "fashion_mnist", keras_home)
    assert f"caches in {keras_home / 'datasets'}." in output
    assert "fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz" in output
    assert "data.source: bundled" in output and not (project / "data" / "raw").exists()


def test_a_made_up_mnist_npz_is_refused_by_its_hash(tmp_path: Path) -> None:
    """Keras checks mnist.npz's sha256: a file that is not the original is re-downloaded (offline: the
    stage fails), and Keras deletes it. Only the real file can be pre-seeded for MNIST."""
    keras_home = tmp_path / "keras-home"
    (keras_home / "datasets").mkdir(parents=True)
    bundled = read_bundled()
    np.savez(keras_home / "datasets" / "mnist.npz", x_train=bundled.x_train[:400, ..., 0],
             y_train=bundled.y_train[:400], x_test=bundled.x_train[400:500, ..., 0], y_test=bundled.y_train[400:500])
    _, output = _ingest_offline(tmp_path, "mnist", keras_home)
    assert "hash does not match" in output  # Keras' own notice, before it tries to download
    assert "only the original file: Keras checks its sha256" in output
    assert not (keras_home / "datasets" / "mnist.npz").exists()
