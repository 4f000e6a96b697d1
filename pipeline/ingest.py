"""The `ingest` stage: read the configured source, validate it, keep the raw uint8 arrays.

`ingest()` is the core (config in, dataset + report out); `write_ingest()` is the file edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig, PipelineConfig
from pipeline.dataset import RawDataset, save_raw, splits_of, validate_dataset
from pipeline.io import write_json
from pipeline.layout import Layout
from pipeline.sources import read_source
from pipeline.versioning import readable_copy, tracked_source


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
        from sklearn.model_selection import train_test_split  # here: the stage imports sklearn only if it subsamples

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
    root = Path(root)
    dataset = read_source(config, readable_copy(config, root))
    warnings: list[str] = []
    source = tracked_source(config, root)
    if source is not None and source.version() is None:
        warnings.append(f"{source.copy.relative_to(root)} is not versioned by DVC: run `python -m pipeline source` "
                        "(dvc add) so that this version of the images can be restored")
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
    for split, images, labels in splits_of(dataset):
        counts = np.bincount(labels, minlength=len(dataset.class_names))
        report["splits"][split] = {
            "images": int(labels.size),
            "per_class": {name: int(count) for name, count in zip(dataset.class_names, counts, strict=True)},
            "pixel_mean": round(float(images.mean()), 3),
            "pixel_min": int(images.min()),
            "pixel_max": int(images.max()),
        }
    return dataset, report


def write_ingest(dataset: RawDataset, report: dict[str, Any], layout: Layout) -> None:
    """The file edge of the stage: raw arrays, report JSON and the sample grid."""
    from pipeline import plots

    save_raw(dataset, layout.raw_dir)
    write_json(layout.ingest_report, report)
    figure = plots.samples_per_class_figure(dataset.x_train, dataset.y_train, dataset.class_names)
    plots.save_figure(figure, layout.samples_figure)


def run_ingest(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `ingest` stage: read, validate, write data/raw/ and reports/data/; return the report."""
    dataset, report = ingest(config.data, config.seed, root)
    write_ingest(dataset, report, Layout(root))
    return report
