"""Normalisation, stratified seeded splits and the leakage check."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.dataset import normalise
from pipeline.prepare import cross_split_duplicates, prepare
from pipeline.sources import DataError, RawDataset


def dataset(count: int = 200, classes: int = 4, seed: int = 0) -> RawDataset:
    rng = np.random.default_rng(seed)
    return RawDataset(x_train=rng.integers(0, 256, (count, 8, 8, 1), dtype=np.uint8),
                      y_train=np.arange(count) % classes, class_names=[f"c{i}" for i in range(classes)],
                      source="generated")


def test_normalise_to_float32_unit_range_with_channel_axis() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2): no channel axis
    normalised = normalise(images)
    assert normalised.dtype == np.float32 and normalised.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(normalised[0, :, :, 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)


def test_normalise_rejects_other_dtypes() -> None:
    with pytest.raises(DataError, match="expected uint8"):
        normalise(np.zeros((1, 2, 2, 1), dtype=np.float32))


def test_splits_are_stratified_seeded_and_disjoint() -> None:
    config = PrepareConfig(val_fraction=0.1, test_fraction=0.2)
    first, report = prepare(dataset(), config, seed=7)
    second, _ = prepare(dataset(), config, seed=7)
    other, _ = prepare(dataset(), config, seed=8)
    assert report["sizes"] == {"train": 144, "val": 16, "test": 40}
    assert np.bincount(first.y_test).tolist() == [10, 10, 10, 10]
    assert np.array_equal(first.x_test, second.x_test) and not np.array_equal(first.x_test, other.x_test)
    assert report["duplicates"] == {"val_in_train": 0, "test_in_train": 0, "test_in_val": 0}


def test_official_test_split_is_kept() -> None:
    raw = dataset()
    with_test = RawDataset(x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_train[:20],
                           y_test=raw.y_train[:20], class_names=raw.class_names, source="generated")
    prepared, report = prepare(with_test, PrepareConfig(max_duplicate_fraction=1.0), seed=0)
    assert prepared.y_test.size == 20 and report["test_split"] == "official"


def test_leakage_above_threshold_fails_and_is_counted() -> None:
    raw = dataset()
    leaky = RawDataset(x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_train[:20], y_test=raw.y_train[:20],
                       class_names=raw.class_names, source="generated")
    with pytest.raises(DataError, match=r"20 of .* exact duplicates .* prepare.max_duplicate_fraction=0.01"):
        prepare(leaky, PrepareConfig(max_duplicate_fraction=0.01), seed=0)


def test_duplicate_counting_is_exact() -> None:
    base = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1)
    later = np.concatenate([base[:2], base[:1] + 100])
    assert cross_split_duplicates({"train": base, "test": later}) == {"test_in_train": 2}


def test_too_few_images_per_class_is_explained() -> None:
    with pytest.raises(DataError, match="Each class needs at least two images per split"):
        prepare(dataset(count=8, classes=4), PrepareConfig(val_fraction=0.1, test_fraction=0.1), seed=0)
