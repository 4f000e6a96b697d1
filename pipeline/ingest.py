"""The `ingest` stage: read the configured source, validate it, keep the raw uint8 arrays.

`ingest()` is the core (config in, dataset + report out); `write_ingest()` is the file edge.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig, PipelineConfig
from pipeline.dataset import RawDataset, save_raw, splits_of, validate_dataset
from pipeline.errors import StorageError
from pipeline.io import describe_bytes, write_json
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


# meta.json, reports/data/ingest.json and samples.png: well under this.
INGEST_OVERHEAD_BYTES = 1 << 20
# DVC's default cache.type: a reflink where the file system has them, else a copy.
DVC_DEFAULT_LINK_TYPES = ("reflink", "copy")


def raw_bytes(dataset: RawDataset) -> int:
    """What `save_raw` writes for `dataset`, without meta.json: each array's .npy file, header and data."""
    total = 0
    for _, images, labels in splits_of(dataset):
        for array in (images, labels):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
            total += header.tell() + array.nbytes
    return total


def dvc_cache_copy(root: Path) -> Path | None:
    """The cache directory DVC copies data/raw into when it commits the stage's outputs, or None: not a DVC
    repository, or its cache.type only links (hardlink, symlink). A reflink is counted as a copy: it costs
    nothing only on file systems that have reflinks (btrfs, XFS), and DVC falls back to copying."""
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        return None
    from dvc.config import Config, ConfigError  # here: only the file edge of the stage needs DVC

    try:
        cache = Config(dvc_dir=str(dvc_dir))["cache"]
    except ConfigError:  # `dvc` itself will refuse this config; the space check assumes the defaults
        cache = {}
    link_types = cache.get("type") or DVC_DEFAULT_LINK_TYPES
    if all(link_type in ("hardlink", "symlink") for link_type in link_types):
        return None
    return Path(cache.get("dir") or dvc_dir / "cache")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(dataset: RawDataset, layout: Layout) -> dict[Path, int]:
    """Fail before writing when a disk lacks room for the new data/raw (and DVC's cache copy of it).

    The previous data/raw stays as it is: `save_raw` swaps the new directory in only once it is complete,
    so it needs its full size free even when it replaces one of the same size.

    Returns:
        The bytes needed in each checked directory (one per file system).

    Raises:
        StorageError naming the directory, the bytes needed and the bytes free.
    """
    raw = raw_bytes(dataset) + INGEST_OVERHEAD_BYTES
    images = sum(labels.size for _, _, labels in splits_of(dataset))
    shape = "x".join(str(size) for size in dataset.x_train.shape[1:])
    what = f"{images:,} images of {shape} uint8"
    data_dir = _existing(layout.raw_dir.parent)
    needs = {data_dir: raw}
    cache = dvc_cache_copy(layout.root)
    if cache is not None:
        cache_dir = _existing(cache)
        if os.stat(cache_dir).st_dev == os.stat(data_dir).st_dev:
            needs[data_dir] += raw
            what += ", plus DVC's cache copy"
        else:
            needs[cache_dir] = raw
    for directory, needed in needs.items():
        free = shutil.disk_usage(directory).free
        if needed > free:
            purpose = "the new data/raw" if directory == data_dir else "DVC's cache copy of the new data/raw"
            raise StorageError(
                f"{directory}: ingest needs {describe_bytes(needed)} free for {purpose} ({what}), but only "
                f"{describe_bytes(free)} is available; free {describe_bytes(needed - free)} or more, or set "
                "data.max_images (a stratified subsample); the previous data/raw is unchanged")
    return needs


def write_ingest(dataset: RawDataset, report: dict[str, Any], layout: Layout) -> None:
    """The file edge of the stage: raw arrays, report JSON and the sample grid (after `check_space`)."""
    from pipeline import plots

    check_space(dataset, layout)
    save_raw(dataset, layout.raw_dir)
    write_json(layout.ingest_report, report)
    figure = plots.samples_per_class_figure(dataset.x_train, dataset.y_train, dataset.class_names)
    plots.save_figure(figure, layout.samples_figure)


def run_ingest(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `ingest` stage: read, validate, write data/raw/ and reports/data/; return the report."""
    dataset, report = ingest(config.data, config.seed, root)
    write_ingest(dataset, report, Layout(root))
    return report
