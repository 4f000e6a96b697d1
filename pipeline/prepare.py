"""The `prepare` stage: split by content hash, check for leakage.

Each image goes to train, validation or test by a keyed hash of its bytes (the key is the params'
`seed`), not by a random draw over the whole data set. So when the data grows, every image keeps
the split it had: today's test images were never yesterday's training images, and the gate
compares a new challenger with the champion on images neither trained on. A source's own test
split (IDX t10k files, a folder's test/) is kept as the test split. The price: splits are not
stratified; the report counts every class in every split so an imbalance is visible.

The stage writes each split's row numbers into the raw arrays, not a copy of the images
(pipeline/dataset.py); the images stay uint8 (N, H, W, C) and are normalised to float32 [0, 1] on the
way into the model, as Conv2D expects them (seeds 002 and 004).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig, PrepareConfig
from pipeline.dataset import SPLITS, PreparedData, RawDataset, load_raw, raw_digest, save_prepared
from pipeline.errors import DataError
from pipeline.io import write_json
from pipeline.layout import Layout

SPLIT_RULE = "blake2b content hash keyed by the params' seed"


def hash_positions(images: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per image from a keyed hash of its bytes: the same image, the same number."""
    key = seed.to_bytes(8, "little", signed=False)
    flat = np.ascontiguousarray(images.reshape(images.shape[0], -1))
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest() for row in flat)
    return np.frombuffer(digests, dtype="<u8").astype(np.float64) / 2.0**64


def assign_splits(images: np.ndarray, seed: int, val_fraction: float, test_fraction: float | None) -> np.ndarray:
    """'train', 'val' or 'test' for each image (`test_fraction` None: the source has its own test split).

    test: position < test_fraction; val: the next val_fraction of the rest; train: everything else.
    """
    positions = hash_positions(images, seed)
    test_share = test_fraction or 0.0
    splits = np.full(images.shape[0], "train", dtype="<U5")
    splits[positions < test_share + (1 - test_share) * val_fraction] = "val"
    splits[positions < test_share] = "test"
    return splits


def _image_keys(images: np.ndarray) -> np.ndarray:
    """One hashable value per image: its raw bytes (exact duplicates compare equal)."""
    flat = np.ascontiguousarray(images.reshape(images.shape[0], -1))
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def cross_split_duplicates(splits: dict[str, np.ndarray]) -> dict[str, int]:
    """Count images of each later split that also appear (byte-identical) in an earlier one."""
    counts: dict[str, int] = {}
    names = list(splits)
    for later_index, later in enumerate(names):
        for earlier in names[:later_index]:
            shared = np.isin(_image_keys(splits[later]), _image_keys(splits[earlier]))
            counts[f"{later}_in_{earlier}"] = int(shared.sum())
    return counts


def prepare(raw: RawDataset, config: PrepareConfig, seed: int) -> tuple[PreparedData, dict[str, Any]]:
    """Split by content hash; fail when more than `max_duplicate_fraction` of val+test
    leaks from train (only a source's own test split can share images with train: equal images hash
    alike and land in the same split).

    Args:
        raw: the ingested dataset.
        config: the `prepare` block of params.yaml.
        seed: the key of the split hash.

    Returns:
        The prepared splits (uint8, with the raw rows they were taken from) and a JSON-able report
        (sizes, class counts, duplicates).
    """
    official_test = raw.x_test is not None and raw.y_test is not None
    assigned = assign_splits(raw.x_train, seed, config.val_fraction, None if official_test else config.test_fraction)
    rows = {name: np.flatnonzero(assigned == name) for name in SPLITS}
    sources = {"train": "train", "val": "train", "test": "train"}
    x_train, y_train = raw.x_train[rows["train"]], raw.y_train[rows["train"]]
    x_val, y_val = raw.x_train[rows["val"]], raw.y_train[rows["val"]]
    if official_test:
        x_test, y_test = np.asarray(raw.x_test), np.asarray(raw.y_test)
        rows["test"], sources["test"] = np.arange(len(y_test)), "test"
    else:
        x_test, y_test = raw.x_train[rows["test"]], raw.y_train[rows["test"]]
    for name, labels in (("train", y_train), ("val", y_val), ("test", y_test)):
        if labels.size == 0:
            key = "prepare.test_fraction" if name == "test" else "prepare.val_fraction"
            raise DataError(f"{raw.source}: the {name} split is empty ({raw.y_train.size} images); use more data "
                            f"or a larger {key}")
    missing = [raw.class_names[index] for index in np.flatnonzero(np.bincount(y_train, minlength=len(
        raw.class_names)) == 0)]
    if missing:
        raise DataError(f"{raw.source}: no training images of class(es) {missing} after the split; every class "
                        "needs images")
    duplicates = cross_split_duplicates({"train": x_train, "val": x_val, "test": x_test})
    held_out = y_val.size + y_test.size
    leaked = duplicates["val_in_train"] + duplicates["test_in_train"] + duplicates["test_in_val"]
    leak_fraction = leaked / held_out
    if leak_fraction > config.max_duplicate_fraction:
        raise DataError(
            f"{raw.source}: {leaked} of {held_out} validation/test images are exact duplicates of images in "
            f"an earlier split ({duplicates}); {leak_fraction:.2%} exceeds prepare.max_duplicate_fraction="
            f"{config.max_duplicate_fraction}. Deduplicate the data or raise the threshold."
        )
    prepared = PreparedData(
        x_train=x_train, y_train=y_train.astype(np.int64), x_val=x_val, y_val=y_val.astype(np.int64),
        x_test=x_test, y_test=y_test.astype(np.int64), class_names=list(raw.class_names), rows=rows,
        sources=sources,
    )
    report = {
        "source": raw.source,
        "input_shape": list(prepared.input_shape),
        "num_classes": prepared.num_classes,
        "class_names": prepared.class_names,
        "test_split": "official" if official_test else f"carved, test_fraction={config.test_fraction}",
        "split_rule": SPLIT_RULE,
        "sizes": {name: int(prepared.split(name)[1].size) for name in SPLITS},
        "per_class": {
            name: {class_name: int(count) for class_name, count in zip(
                prepared.class_names, np.bincount(prepared.split(name)[1], minlength=prepared.num_classes),
                strict=True)}
            for name in SPLITS
        },
        "duplicates": duplicates,
        "duplicate_fraction": round(leak_fraction, 6),
    }
    report["warnings"] = [f"class {name!r} has no {split} images ({report['sizes'][split]} in the split)"
                          for split in ("val", "test") for name, count in report["per_class"][split].items()
                          if count == 0]
    return prepared, report


def write_prepare(prepared: PreparedData, report: dict[str, Any], layout: Layout, digest: str) -> None:
    """The file edge of the stage: the splits' raw rows (`digest`: of the raw arrays they index), the split
    report and the class histogram."""
    from pipeline import plots

    save_prepared(prepared, layout.prepared_dir, digest)
    write_json(layout.prepare_report, report)
    figure = plots.class_histogram_figure(report["per_class"], prepared.class_names)
    plots.save_figure(figure, layout.class_histogram_figure)


def run_prepare(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `prepare` stage: data/raw/ -> data/prepared/ and reports/data/; return the report."""
    layout = Layout(root)
    raw = load_raw(layout.raw_dir)
    prepared, report = prepare(raw, config.prepare, config.seed)
    write_prepare(prepared, report, layout, raw_digest(raw))
    return report
