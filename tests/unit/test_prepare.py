"""Normalisation, stratified seeded splits and the leakage check."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.dataset import normalise
from pipeline.prepare import SplitImages, cross_split_duplicates, image_digests, prepare, split_rows
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


def test_splits_follow_the_content_hash_seeded_and_disjoint() -> None:
    config = PrepareConfig(val_fraction=0.1, test_fraction=0.2)
    first, report = prepare(dataset(2000), config, seed=7)
    second, _ = prepare(dataset(2000), config, seed=7)
    other, _ = prepare(dataset(2000), config, seed=8)
    sizes = report["sizes"]
    assert sum(sizes.values()) == 2000
    assert abs(sizes["test"] - 400) < 60 and abs(sizes["val"] - 160) < 45  # 0.2 and 0.8 x 0.1, by hash
    assert np.array_equal(first.x_test, second.x_test) and not np.array_equal(first.x_test, other.x_test)
    assert report["duplicates"] == {"val_in_train": 0, "test_in_train": 0, "test_in_val": 0}
    assert set(report["per_class"]["test"]) == {"c0", "c1", "c2", "c3"}


def test_growing_data_keeps_every_images_split() -> None:
    """3,000 bundled digits, then 4,500 (the same 3,000 and 1,500 more): every one of the first 3,000
    keeps its split, so no test image of the new version was a training image of the old champion."""
    from pipeline.sources import read_bundled

    bundled = read_bundled()
    arrival = np.random.default_rng(0).permutation(bundled.y_train.size)  # the sample is sorted by class

    def splits_of(count: int) -> dict[bytes, str]:
        raw = RawDataset(x_train=bundled.x_train[arrival[:count]], y_train=bundled.y_train[arrival[:count]],
                         class_names=bundled.class_names, source="bundled")
        prepared, _ = prepare(raw, PrepareConfig(), seed=42)
        return {image.tobytes(): split for split in ("train", "val", "test")
                for image in prepared.split(split)[0]}

    old, new = splits_of(3000), splits_of(4500)
    assert all(new[image] == split for image, split in old.items())
    old_train = {image for image, split in old.items() if split == "train"}
    assert not old_train & {image for image, split in new.items() if split == "test"}
    assert len(new) > len(old) + 1400  # (a few digits of the sample are byte-identical)


def test_identical_images_land_in_the_same_split() -> None:
    raw = dataset(400)
    doubled = RawDataset(x_train=np.concatenate([raw.x_train, raw.x_train]),
                         y_train=np.concatenate([raw.y_train, raw.y_train]), class_names=raw.class_names,
                         source="generated")
    _, report = prepare(doubled, PrepareConfig(), seed=1)
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


def _split(images: np.ndarray, digests: np.ndarray | None = None) -> SplitImages:
    rows = np.arange(len(images))
    return SplitImages(images, rows, image_digests(images, seed=0) if digests is None else digests)


def test_duplicate_counting_is_exact() -> None:
    base = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1)
    later = np.concatenate([base[:2], base[:1] + 100])
    assert cross_split_duplicates({"train": _split(base), "test": _split(later)}) == {"test_in_train": 2}


def test_a_digest_collision_is_not_counted_as_a_duplicate() -> None:
    """Equal digests only make candidates; the bytes decide (forced collisions: every digest 7)."""
    base = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1)
    later = np.concatenate([base[:1], base[:2] + 100])
    collide = np.full(len(later), 7, dtype=np.uint64)
    counted = cross_split_duplicates({"train": _split(base, np.full(5, 7, dtype=np.uint64)),
                                      "test": _split(later, collide)})
    assert counted == {"test_in_train": 1}


def test_splits_are_rows_not_copies() -> None:
    """The stage's split holds row numbers of the raw arrays; the gathered images are those rows."""
    raw = dataset(400)
    rows, sources, report = split_rows(raw, PrepareConfig(val_fraction=0.2, test_fraction=0.2), seed=1)
    prepared, _ = prepare(raw, PrepareConfig(val_fraction=0.2, test_fraction=0.2), seed=1)
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(400))  # each image in one split
    for name in ("train", "val", "test"):
        assert sources[name] == "train" and np.array_equal(prepared.split(name)[0], raw.x_train[rows[name]])
        assert report["sizes"][name] == len(rows[name])


def test_an_empty_split_is_explained() -> None:
    with pytest.raises(DataError, match=r"the (val|test) split is empty .* use more data or a larger prepare\."):
        prepare(dataset(count=3, classes=2), PrepareConfig(val_fraction=0.01, test_fraction=0.01), seed=0)


def test_a_class_missing_from_a_held_out_split_is_reported() -> None:
    raw = dataset(400, classes=2)
    rare = RawDataset(x_train=np.concatenate([raw.x_train, raw.x_train[:1] // 2]),
                      y_train=np.concatenate([raw.y_train, [2]]), class_names=[*raw.class_names, "rare"],
                      source="generated")
    _, report = prepare(rare, PrepareConfig(), seed=3)
    held_out = [split for split in ("val", "test") if report["per_class"][split]["rare"] == 0]
    assert [warning for warning in report["warnings"] if "'rare'" in warning] == [
        f"class 'rare' has no {split} images ({report['sizes'][split]} in the split)" for split in held_out]
