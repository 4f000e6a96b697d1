"""The `ingest` stage: read the configured source, validate it, keep the raw uint8 arrays.

`ingest()` is the core (config in, dataset + report out); `write_ingest()` is the file edge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.config import DataConfig, PipelineConfig
from pipeline.io import atomic_directory, write_json
from pipeline.sources import DataError, RawDataset, read_source

# A class with fewer than this share of the largest class's images gets a warning in the report.
IMBALANCE_WARNING_RATIO = 0.5


def validate_dataset(dataset: RawDataset) -> list[str]:
    """Check shapes, dtypes, labels and classes; raise DataError on a problem, return warnings."""
    warnings: list[str] = []
    num_classes = len(dataset.class_names)
    if num_classes < 2:
        raise DataError(f"{dataset.source}: {num_classes} class(es); a classifier needs at least two")
    if len(set(dataset.class_names)) != num_classes:
        raise DataError(f"{dataset.source}: class names repeat: {dataset.class_names}")
    for split, images, labels in _splits(dataset):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{dataset.source} ({split}): images must be uint8 (N, H, W, C), "
                            f"got {images.dtype} {images.shape}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{dataset.source} ({split}): {images.shape[0]} images but {labels.shape[0]} labels")
        if images.shape[0] == 0:
            raise DataError(f"{dataset.source} ({split}): no images")
        out_of_range = labels[(labels < 0) | (labels >= num_classes)]
        if out_of_range.size:
            raise DataError(
                f"{dataset.source} ({split}): label {int(out_of_range[0])} is outside 0..{num_classes - 1} "
                f"({num_classes} classes: {', '.join(dataset.class_names)}); "
                f"{out_of_range.size} label(s) out of range"
            )
    counts = np.bincount(dataset.y_train, minlength=num_classes)
    empty = [dataset.class_names[index] for index in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{dataset.source}: no training images for class(es) {empty}")
    if counts.min() < IMBALANCE_WARNING_RATIO * counts.max():
        warnings.append(
            f"class imbalance: {dataset.class_names[int(counts.argmin())]!r} has {int(counts.min())} "
            f"training images, {dataset.class_names[int(counts.argmax())]!r} has {int(counts.max())}"
        )
    return warnings


def _splits(dataset: RawDataset) -> list[tuple[str, np.ndarray, np.ndarray]]:
    splits = [("train", dataset.x_train, dataset.y_train)]
    if dataset.x_test is not None and dataset.y_test is not None:
        splits.append(("test", dataset.x_test, dataset.y_test))
    return splits


def subsample(dataset: RawDataset, max_images: int, seed: int) -> tuple[RawDataset, list[str]]:
    """A stratified, seeded subsample of at most `max_images` (test split shrunk in proportion).

    Returns:
        The subsample and warnings (a class too small to stratify makes it a plain seeded sample).
    """
    total = dataset.y_train.size + (0 if dataset.y_test is None else dataset.y_test.size)
    if total <= max_images:
        return dataset, []
    keep = max_images / total
    warnings: list[str] = []

    def shrink(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = max(len(np.unique(labels)), round(labels.size * keep))
        if count >= labels.size:
            return images, labels
        indices = np.arange(labels.size)
        try:
            chosen, _ = train_test_split(indices, train_size=count, stratify=labels, random_state=seed)
        except ValueError as error:  # a class too small to stratify
            warnings.append(f"data.max_images: stratified subsample impossible ({error}); used a seeded "
                            "random sample instead")
            chosen = np.random.default_rng(seed).choice(indices, size=count, replace=False)
        chosen = np.sort(chosen)
        return images[chosen], labels[chosen]

    x_train, y_train = shrink(dataset.x_train, dataset.y_train)
    x_test, y_test = dataset.x_test, dataset.y_test
    if x_test is not None and y_test is not None:
        x_test, y_test = shrink(x_test, y_test)
    subset = RawDataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        class_names=dataset.class_names, source=dataset.source)
    return subset, warnings


def ingest(config: DataConfig, seed: int, root: str | Path = ".") -> tuple[RawDataset, dict[str, Any]]:
    """Read and validate the configured source.

    Args:
        config: the `data` block of params.yaml.
        seed: seeds the optional subsample.
        root: directory that relative `data.path` values are taken from.

    Returns:
        The dataset and a JSON-able report (counts per class and split, pixel statistics, warnings).
    """
    dataset = read_source(config, root)
    warnings: list[str] = []
    if config.max_images is not None:
        dataset, warnings = subsample(dataset, config.max_images, seed)
    warnings += validate_dataset(dataset)
    report: dict[str, Any] = {
        "source": dataset.source,
        "image_shape": list(dataset.x_train.shape[1:]),
        "dtype": str(dataset.x_train.dtype),
        "class_names": dataset.class_names,
        "has_test_split": dataset.x_test is not None,
        "splits": {},
        "warnings": warnings,
    }
    for split, images, labels in _splits(dataset):
        counts = np.bincount(labels, minlength=len(dataset.class_names))
        report["splits"][split] = {
            "images": int(labels.size),
            "per_class": {name: int(count) for name, count in zip(dataset.class_names, counts, strict=True)},
            "pixel_mean": round(float(images.mean()), 3),
            "pixel_min": int(images.min()),
            "pixel_max": int(images.max()),
        }
    return dataset, report


def save_raw(dataset: RawDataset, directory: str | Path) -> None:
    """Write the arrays as .npy (byte-for-byte reproducible, unlike .npz) plus meta.json."""
    with atomic_directory(directory) as staging:
        for split, images, labels in _splits(dataset):
            np.save(staging / f"x_{split}.npy", images)
            np.save(staging / f"y_{split}.npy", labels)
        meta = {"class_names": dataset.class_names, "source": dataset.source}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_raw(directory: str | Path) -> RawDataset:
    """Read what `save_raw` wrote, checked again: a damaged file fails here, named, not deep in `prepare`."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} holds no ingested data; run the ingest stage first (dvc repro ingest)")
    rerun = "rerun the ingest stage (dvc repro -f ingest)"
    try:
        meta = json.loads(meta_path.read_text())
        class_names, source = [str(name) for name in meta["class_names"]], str(meta["source"])
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{meta_path}: unreadable ({type(error).__name__}: {error}); {rerun}") from None
    splits = ["train", "test"] if (directory / "x_test.npy").is_file() else ["train"]
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        for kind in ("x", "y"):
            path = directory / f"{kind}_{split}.npy"
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                raise DataError(f"{path}: unreadable array ({error}); {rerun}") from None
            if kind == "x" and (array.dtype != np.uint8 or array.ndim != 4):
                raise DataError(f"{path}: expected uint8 images (N, H, W, C), found {array.dtype} {array.shape}; "
                                f"{rerun}")
            if kind == "y" and (array.dtype.kind not in "iu" or array.ndim != 1):
                raise DataError(f"{path}: expected integer labels (N,), found {array.dtype} {array.shape}; {rerun}")
            if kind == "y" and array.size and (array.min() < 0 or array.max() >= len(class_names)):
                raise DataError(f"{path}: labels must lie in 0..{len(class_names) - 1} ({len(class_names)} classes "
                                f"in {meta_path.name}), found {array.min()}..{array.max()}; {rerun}")
            arrays[f"{kind}_{split}"] = array
    dataset = RawDataset(**arrays, class_names=class_names, source=source)
    try:
        validate_dataset(dataset)
    except DataError as error:
        raise DataError(f"{directory}: {error}; {rerun}") from None
    return dataset


def write_ingest(dataset: RawDataset, report: dict[str, Any], data_dir: str | Path, report_dir: str | Path) -> None:
    """The file edge of the stage: raw arrays, report JSON and the sample grid."""
    from pipeline import plots

    save_raw(dataset, data_dir)
    report_dir = Path(report_dir)
    write_json(report_dir / "ingest.json", report)
    figure = plots.samples_per_class_figure(dataset.x_train, dataset.y_train, dataset.class_names)
    plots.save_figure(figure, report_dir / "samples.png")


def run_ingest(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `ingest` stage: read, validate, write data/raw/ and reports/data/; return the report."""
    dataset, report = ingest(config.data, config.seed, root)
    write_ingest(dataset, report, root / "data" / "raw", root / "reports" / "data")
    return report
