"""The `prepare` stage: normalise, reshape, split (stratified, seeded) and check for leakage.

uint8 [0, 255] -> float32 [0, 1], shaped (N, H, W, C) as Conv2D expects (seeds 002 and 004).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.config import PipelineConfig, PrepareConfig
from pipeline.dataset import SPLITS, PreparedData, RawDataset, load_raw, normalise, save_prepared
from pipeline.errors import DataError
from pipeline.io import write_json
from pipeline.layout import Layout


def _stratified_split(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                      key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        return train_test_split(images, labels, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as error:
        raise DataError(
            f"cannot split {labels.size} images stratified by class with prepare.{key}={fraction}: {error}. "
            "Each class needs at least two images per split: use more data or a larger fraction."
        ) from None


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
    """Split and normalise; fail when more than `max_duplicate_fraction` of val+test leaks from train.

    Args:
        raw: the ingested dataset.
        config: the `prepare` block of params.yaml.
        seed: seeds both splits.

    Returns:
        The prepared splits and a JSON-able report (sizes, class counts, duplicates).
    """
    if raw.x_test is not None and raw.y_test is not None:
        x_pool, y_pool, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    else:
        x_pool, x_test, y_pool, y_test = _stratified_split(raw.x_train, raw.y_train, config.test_fraction,
                                                           seed, "test_fraction")
    x_train, x_val, y_train, y_val = _stratified_split(x_pool, y_pool, config.val_fraction, seed + 1,
                                                       "val_fraction")
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
        x_train=normalise(x_train), y_train=y_train.astype(np.int64),
        x_val=normalise(x_val), y_val=y_val.astype(np.int64),
        x_test=normalise(x_test), y_test=y_test.astype(np.int64),
        class_names=list(raw.class_names),
    )
    report = {
        "source": raw.source,
        "input_shape": list(prepared.input_shape),
        "num_classes": prepared.num_classes,
        "class_names": prepared.class_names,
        "test_split": "official" if raw.x_test is not None else f"carved, test_fraction={config.test_fraction}",
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
    return prepared, report


def write_prepare(prepared: PreparedData, report: dict[str, Any], layout: Layout) -> None:
    """The file edge of the stage: prepared arrays, the split report and the class histogram."""
    from pipeline import plots

    save_prepared(prepared, layout.prepared_dir)
    write_json(layout.prepare_report, report)
    figure = plots.class_histogram_figure(report["per_class"], prepared.class_names)
    plots.save_figure(figure, layout.class_histogram_figure)


def run_prepare(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `prepare` stage: data/raw/ -> data/prepared/ and reports/data/; return the report."""
    layout = Layout(root)
    prepared, report = prepare(load_raw(layout.raw_dir), config.prepare, config.seed)
    write_prepare(prepared, report, layout)
    return report
