"""The register stage's reading of the evaluate stage's predictions: checked against the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import PreparedData
from pipeline.errors import MissingInputError, RegistryError
from pipeline.layout import Layout
from pipeline.register import evaluated_predictions


def _data(labels: list[int]) -> PreparedData:
    empty = np.zeros((0, 2, 2, 1), np.float32)
    return PreparedData(x_train=empty, y_train=np.zeros(0, np.int64), x_val=empty, y_val=np.zeros(0, np.int64),
                        x_test=np.zeros((len(labels), 2, 2, 1), np.float32), y_test=np.array(labels),
                        class_names=["cat", "dog", "owl"])


def _write_predictions(root: Path, rows: list[tuple[str, str]]) -> None:
    path = Layout(root).predictions_file("v")
    path.parent.mkdir(parents=True)
    path.write_text("actual,predicted,probability\n" + "".join(f"{a},{p},0.9\n" for a, p in rows))


def test_evaluated_predictions_become_class_indices(tmp_path: Path) -> None:
    _write_predictions(tmp_path, [("cat", "dog"), ("owl", "owl"), ("dog", "dog")])
    predicted, confidence = evaluated_predictions(tmp_path, "v", _data([0, 2, 1]))
    np.testing.assert_array_equal(predicted, [1, 2, 1])
    np.testing.assert_array_equal(confidence, [0.9, 0.9, 0.9])


@pytest.mark.parametrize("rows", [
    [("cat", "dog"), ("owl", "owl")],                  # fewer rows than test images
    [("cat", "dog"), ("dog", "owl"), ("dog", "dog")],  # another test split
    [("cat", "dog"), ("owl", "emu"), ("dog", "dog")],  # a class the data does not have
])
def test_stale_or_edited_predictions_are_refused(tmp_path: Path, rows: list[tuple[str, str]]) -> None:
    _write_predictions(tmp_path, rows)
    with pytest.raises(RegistryError, match="does not match the test split"):
        evaluated_predictions(tmp_path, "v", _data([0, 2, 1]))


def test_missing_predictions_say_to_evaluate(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="evaluate the variant first"):
        evaluated_predictions(tmp_path, "v", _data([0]))
