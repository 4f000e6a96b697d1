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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig, PrepareConfig
from pipeline.dataset import (
    SPLITS,
    Images,
    PreparedData,
    RawDataset,
    image_chunks,
    load_raw,
    raw_digest,
    save_prepared,
)
from pipeline.errors import DataError
from pipeline.io import write_json
from pipeline.layout import Layout

SPLIT_RULE = "blake2b content hash keyed by the params' seed"


def image_digests(images: Images, seed: int) -> np.ndarray:
    """A keyed 8-byte blake2b hash of each image's bytes (uint64): the same image, the same number.
    The images are read a chunk at a time."""
    key = seed.to_bytes(8, "little", signed=False)
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest()
                       for chunk in image_chunks(images) for row in chunk.reshape(len(chunk), -1))
    return np.frombuffer(digests, dtype="<u8")


def assign_splits(digests: np.ndarray, val_fraction: float, test_fraction: float | None) -> np.ndarray:
    """'train', 'val' or 'test' for each image by its digest's position in [0, 1) (`test_fraction` None:
    the source has its own test split).

    test: position < test_fraction; val: the next val_fraction of the rest; train: everything else.
    """
    positions = digests.astype(np.float64) / 2.0**64
    test_share = test_fraction or 0.0
    splits = np.full(digests.shape[0], "train", dtype="<U5")
    splits[positions < test_share + (1 - test_share) * val_fraction] = "val"
    splits[positions < test_share] = "test"
    return splits


@dataclass(frozen=True)
class SplitImages:
    """A split as rows of a raw array, with the digests of those rows' images."""

    images: Images  # the raw array (RawRows of its file), not a copy of the split
    rows: np.ndarray
    digests: np.ndarray  # image_digests(images)[rows]


def cross_split_duplicates(splits: dict[str, SplitImages]) -> dict[str, int]:
    """Count images of each later split that also appear (byte-identical) in an earlier one.

    Candidates are the images whose digest appears in the earlier split; each is then compared byte for
    byte with the earlier images of the same digest, so a digest collision cannot count as a duplicate.
    """
    counts: dict[str, int] = {}
    names = list(splits)
    for later_index, later_name in enumerate(names):
        later = splits[later_name]
        for earlier_name in names[:later_index]:
            earlier = splits[earlier_name]
            candidates = np.flatnonzero(np.isin(later.digests, earlier.digests))
            same_digest: dict[int, list[int]] = {}
            for position in np.flatnonzero(np.isin(earlier.digests, later.digests[candidates])):
                same_digest.setdefault(int(earlier.digests[position]), []).append(int(position))
            counts[f"{later_name}_in_{earlier_name}"] = sum(
                any(np.array_equal(later.images[later.rows[index]], earlier.images[earlier.rows[position]])
                    for position in same_digest[int(later.digests[index])])
                for index in candidates)
    return counts


def split_rows(raw: RawDataset, config: PrepareConfig, seed: int) -> tuple[dict[str, np.ndarray], dict[str, str],
                                                                              dict[str, Any]]:
    """Split by content hash; fail when more than `max_duplicate_fraction` of val+test leaks from train
    (only a source's own test split can share images with train: equal images hash alike and land in
    the same split). No image is copied: the splits are rows of the raw arrays.

    Args:
        raw: the ingested dataset (its images RawRows of data/raw or arrays).
        config: the `prepare` block of params.yaml.
        seed: the key of the split hash.

    Returns:
        Each split's rows, the raw array ("train" or "test") each split's rows index, and a JSON-able
        report (sizes, class counts, duplicates).
    """
    official_test = raw.x_test is not None and raw.y_test is not None
    digests = image_digests(raw.x_train, seed)
    assigned = assign_splits(digests, config.val_fraction, None if official_test else config.test_fraction)
    rows = {name: np.flatnonzero(assigned == name) for name in SPLITS}
    sources = {"train": "train", "val": "train", "test": "train"}
    splits = {name: SplitImages(raw.x_train, rows[name], digests[rows[name]]) for name in SPLITS}
    labels = {name: np.asarray(raw.y_train[rows[name]], dtype=np.int64) for name in SPLITS}
    if official_test:
        rows["test"], sources["test"] = np.arange(len(raw.y_test)), "test"
        splits["test"] = SplitImages(raw.x_test, rows["test"], image_digests(raw.x_test, seed))
        labels["test"] = np.asarray(raw.y_test, dtype=np.int64)
    for name in SPLITS:
        if labels[name].size == 0:
            key = "prepare.test_fraction" if name == "test" else "prepare.val_fraction"
            raise DataError(f"{raw.source}: the {name} split is empty ({raw.y_train.size} images); use more data "
                            f"or a larger {key}")
    num_classes = len(raw.class_names)
    missing = [raw.class_names[index] for index in np.flatnonzero(np.bincount(labels["train"], minlength=num_classes)
                                                                  == 0)]
    if missing:
        raise DataError(f"{raw.source}: no training images of class(es) {missing} after the split; every class "
                        "needs images")
    duplicates = cross_split_duplicates(splits)
    held_out = labels["val"].size + labels["test"].size
    leaked = duplicates["val_in_train"] + duplicates["test_in_train"] + duplicates["test_in_val"]
    leak_fraction = leaked / held_out
    if leak_fraction > config.max_duplicate_fraction:
        raise DataError(
            f"{raw.source}: {leaked} of {held_out} validation/test images are exact duplicates of images in "
            f"an earlier split ({duplicates}); {leak_fraction:.2%} exceeds prepare.max_duplicate_fraction="
            f"{config.max_duplicate_fraction}. Deduplicate the data or raise the threshold."
        )
    report = {
        "source": raw.source,
        "input_shape": list(raw.x_train.shape[1:]),
        "num_classes": num_classes,
        "class_names": list(raw.class_names),
        "test_split": "official" if official_test else f"carved, test_fraction={config.test_fraction}",
        "split_rule": SPLIT_RULE,
        "sizes": {name: int(labels[name].size) for name in SPLITS},
        "per_class": {
            name: {class_name: int(count) for class_name, count in zip(
                raw.class_names, np.bincount(labels[name], minlength=num_classes), strict=True)}
            for name in SPLITS
        },
        "duplicates": duplicates,
        "duplicate_fraction": round(leak_fraction, 6),
    }
    report["warnings"] = [f"class {name!r} has no {split} images ({report['sizes'][split]} in the split)"
                          for split in ("val", "test") for name, count in report["per_class"][split].items()
                          if count == 0]
    return rows, sources, report


def prepare(raw: RawDataset, config: PrepareConfig, seed: int) -> tuple[PreparedData, dict[str, Any]]:
    """`split_rows`, with the splits' images gathered into memory (uint8): for code that fits in-process
    (benchmarks, tests). The stage itself writes only the rows (`run_prepare`).

    Returns:
        The prepared splits and the report.
    """
    rows, sources, report = split_rows(raw, config, seed)
    raw_arrays = {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}
    arrays: dict[str, np.ndarray] = {}
    for name in SPLITS:
        images, labels = raw_arrays[sources[name]]
        arrays[f"x_{name}"] = np.asarray(images[rows[name]])
        arrays[f"y_{name}"] = np.asarray(labels[rows[name]], dtype=np.int64)
    return PreparedData(**arrays, class_names=list(raw.class_names)), report


def write_prepare(rows: dict[str, np.ndarray], sources: dict[str, str], report: dict[str, Any], layout: Layout,
                  digest: str) -> None:
    """The file edge of the stage: the splits' raw rows (`digest`: of the raw arrays they index), the split
    report and the class histogram."""
    from pipeline import plots

    save_prepared(layout.prepared_dir, rows, sources, report["class_names"], report["input_shape"], digest)
    write_json(layout.prepare_report, report)
    figure = plots.class_histogram_figure(report["per_class"], report["class_names"])
    plots.save_figure(figure, layout.class_histogram_figure)


def run_prepare(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `prepare` stage: data/raw/ -> data/prepared/ and reports/data/; return the report."""
    layout = Layout(root)
    raw = load_raw(layout.raw_dir)
    rows, sources, report = split_rows(raw, config.prepare, config.seed)
    write_prepare(rows, sources, report, layout, raw_digest(raw))
    return report
