"""Content digests of .keras files and the register stage's use of the evaluate stage's predictions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import layout
from pipeline.lineage import file_sha256, keras_content_digest
from pipeline.prepare import PreparedData
from pipeline.register import evaluated_predictions


def _model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                             keras.layers.Dense(3, activation="softmax")])


def test_same_model_saved_twice_has_one_digest_different_weights_another(tmp_path: Path) -> None:
    model = _model(0)
    first, second, other = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "c.keras"
    model.save(first)
    time.sleep(1.1)  # metadata.json records the save time to the second
    model.save(second)
    _model(1).save(other)
    assert file_sha256(first) != file_sha256(second)
    assert keras_content_digest(first) == keras_content_digest(second)
    assert keras_content_digest(first) != keras_content_digest(other)


def test_digest_of_a_file_that_is_not_keras_names_it(tmp_path: Path) -> None:
    broken = tmp_path / "model.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"model\.keras is not a readable \.keras file"):
        keras_content_digest(broken)


def _data(labels: list[int]) -> PreparedData:
    empty = np.zeros((0, 2, 2, 1), np.float32)
    return PreparedData(x_train=empty, y_train=np.zeros(0, np.int64), x_val=empty, y_val=np.zeros(0, np.int64),
                        x_test=np.zeros((len(labels), 2, 2, 1), np.float32), y_test=np.array(labels),
                        class_names=["cat", "dog", "owl"])


def _write_predictions(root: Path, rows: list[tuple[str, str]]) -> None:
    path = layout.predictions_file(root, "v")
    path.parent.mkdir(parents=True)
    path.write_text("actual,predicted,probability\n" + "".join(f"{a},{p},0.9\n" for a, p in rows))


def test_evaluated_predictions_become_class_indices(tmp_path: Path) -> None:
    _write_predictions(tmp_path, [("cat", "dog"), ("owl", "owl"), ("dog", "dog")])
    predicted = evaluated_predictions(tmp_path, "v", _data([0, 2, 1]))
    np.testing.assert_array_equal(predicted, [1, 2, 1])


@pytest.mark.parametrize("rows", [
    [("cat", "dog"), ("owl", "owl")],                  # fewer rows than test images
    [("cat", "dog"), ("dog", "owl"), ("dog", "dog")],  # another test split
    [("cat", "dog"), ("owl", "emu"), ("dog", "dog")],  # a class the data does not have
])
def test_stale_or_edited_predictions_are_refused(tmp_path: Path, rows: list[tuple[str, str]]) -> None:
    _write_predictions(tmp_path, rows)
    with pytest.raises(ValueError, match="does not match the test split"):
        evaluated_predictions(tmp_path, "v", _data([0, 2, 1]))


def test_missing_predictions_say_to_evaluate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluate the variant first"):
        evaluated_predictions(tmp_path, "v", _data([0]))
