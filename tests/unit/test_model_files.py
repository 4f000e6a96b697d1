"""Model files: reproducible .keras saves, content digests, checked loading."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelFileError
from pipeline.lineage import file_sha256
from pipeline.model_files import content_digest, load_model_checked, save_model


def _model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    # Named layers: Keras numbers unnamed ones per process (conv2d, conv2d_1, ...).
    return keras.Sequential([keras.Input((6, 6, 1), name="image"), keras.layers.Conv2D(2, 3, name="conv"),
                             keras.layers.Flatten(name="flatten"), keras.layers.Dense(3, activation="softmax",
                                                                                      name="head")], name="tiny")


def test_same_model_saved_twice_has_one_digest_different_weights_another(tmp_path: Path) -> None:
    model = _model(0)
    first, second, other = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "c.keras"
    model.save(first)
    time.sleep(1.1)  # metadata.json records the save time to the second
    model.save(second)
    _model(1).save(other)
    assert file_sha256(first) != file_sha256(second)
    assert content_digest(first) == content_digest(second)
    assert content_digest(first) != content_digest(other)


def test_digest_of_a_file_that_is_not_keras_names_it(tmp_path: Path) -> None:
    broken = tmp_path / "model.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match=r"model\.keras is not a readable \.keras file"):
        content_digest(broken)


def test_save_model_writes_the_same_bytes_for_the_same_model(tmp_path: Path) -> None:
    """Keras' own file differs between saves (save time, object addresses as shared_object_id, zip
    timestamps); save_model's does not, also for the same model built again as new Python objects."""
    first, second, rebuilt, other = (tmp_path / f"{name}.keras" for name in ("a", "b", "c", "d"))
    model = _model(0)
    save_model(model, first)
    time.sleep(1.1)
    save_model(model, second)
    save_model(_model(0), rebuilt)
    save_model(_model(1), other)
    assert file_sha256(first) == file_sha256(second) == file_sha256(rebuilt)
    assert file_sha256(first) != file_sha256(other)
    assert content_digest(first) == content_digest(rebuilt)
    probe = np.random.default_rng(0).random((2, 6, 6, 1), dtype=np.float32)
    np.testing.assert_array_equal(load_model_checked(first, file_sha256(first)).predict(probe, verbose=0),
                                  model.predict(probe, verbose=0))
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporaries left
