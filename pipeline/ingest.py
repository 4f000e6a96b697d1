"""The `ingest` stage: read the configured source, validate it, keep the raw uint8 arrays.

`ingest()` is the core (config in, dataset + report out); `write_ingest()` is the file edge.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig, PipelineConfig
from pipeline.dataset import (
    Images,
    ImageStore,
    RawDataset,
    image_chunks,
    in_directory,
    npy_header_bytes,
    save_raw,
    splits_of,
    validate_dataset,
    write_raw,
)
from pipeline.errors import StorageError
from pipeline.io import atomic_directory, describe_bytes, write_json
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


def pixel_statistics(images: Images) -> dict[str, Any]:
    """Mean, min and max of uint8 images, read a chunk at a time."""
    total, low, high = 0, 255, 0
    for chunk in image_chunks(images):
        total += int(chunk.sum(dtype=np.uint64))
        low, high = min(low, int(chunk.min(initial=255))), max(high, int(chunk.max(initial=0)))
    count = max(1, math.prod(images.shape))
    return {"pixel_mean": round(total / count, 3), "pixel_min": low, "pixel_max": high}


def ingest(config: DataConfig, seed: int, root: str | Path = ".",
           store: ImageStore | None = None) -> tuple[RawDataset, dict[str, Any]]:
    """Read and validate the configured source.

    Args:
        config: the `data` block of params.yaml.
        seed: seeds the optional subsample.
        root: directory that relative `data.path` values are taken from.
        store: where the idx, csv and folder sources decode their images (default: in memory;
            `run_ingest` decodes them into the new data/raw on disk).

    Returns:
        The dataset and a JSON-able report (counts per class and split, pixel statistics, warnings).
    """
    root = Path(root)
    dataset = read_source(config, readable_copy(config, root), store or ImageStore())
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
            **pixel_statistics(images),
        }
    return dataset, report


# meta.json, reports/data/ingest.json and samples.png: well under this.
INGEST_OVERHEAD_BYTES = 1 << 20
# DVC's default cache.type: a reflink where the file system has them, else a copy.
DVC_DEFAULT_LINK_TYPES = ("reflink", "copy")


def npy_bytes(array: Images) -> int:
    """The size of the .npy file `write_raw` writes for `array`: header and data."""
    return len(npy_header_bytes(tuple(array.shape), array.dtype)) + math.prod(array.shape) * array.dtype.itemsize


def raw_bytes(dataset: RawDataset) -> int:
    """What `save_raw` writes for `dataset`, without meta.json: each array's .npy file, header and data."""
    return sum(npy_bytes(array) for _, images, labels in splits_of(dataset) for array in (images, labels))


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


class SpaceCheck:
    """Fails before writing when a disk lacks room for the new data/raw (and DVC's cache copy of it).

    `reserve` is called for each part of the new data/raw before it is written (by an ImageStore before
    each decoded array, by `write_ingest` for the rest) and checks everything reserved so far against
    the free space measured at the first call, before any of it was written. The previous data/raw
    stays as it is: the new one is swapped in only once it is complete, so it needs its full size free
    even when it replaces one of the same size.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.raw = INGEST_OVERHEAD_BYTES
        self.images = 0
        self.shape = ""
        self.free: dict[Path, int] | None = None

    def reserve(self, nbytes: int, images: int = 0, image_shape: tuple[int, ...] = ()) -> dict[Path, int]:
        """Add `nbytes` (holding `images` images of `image_shape`) and check the total.

        Returns:
            The bytes needed so far in each checked directory (one per file system).

        Raises:
            StorageError naming the directory, the bytes needed and the bytes free.
        """
        self.raw += nbytes
        self.images += images
        self.shape = "x".join(str(size) for size in image_shape) or self.shape
        what = f"{self.images:,} images of {self.shape} uint8"
        data_dir = _existing(self.layout.raw_dir.parent)
        needs = {data_dir: self.raw}
        cache = dvc_cache_copy(self.layout.root)
        if cache is not None:
            cache_dir = _existing(cache)
            if os.stat(cache_dir).st_dev == os.stat(data_dir).st_dev:
                needs[data_dir] += self.raw
                what += ", plus DVC's cache copy"
            else:
                needs[cache_dir] = self.raw
        if self.free is None:
            self.free = {directory: shutil.disk_usage(directory).free for directory in needs}
        for directory, needed in needs.items():
            free = self.free[directory]
            if needed > free:
                purpose = "the new data/raw" if directory == data_dir else "DVC's cache copy of the new data/raw"
                raise StorageError(
                    f"{directory}: ingest needs {describe_bytes(needed)} free for {purpose} ({what}), but only "
                    f"{describe_bytes(free)} is available; free {describe_bytes(needed - free)} or more, or set "
                    "data.max_images (a stratified subsample); the previous data/raw is unchanged")
        return needs


def check_space(dataset: RawDataset, layout: Layout) -> dict[Path, int]:
    """`SpaceCheck` of the whole of an in-memory `dataset`: the bytes needed in each checked directory."""
    images = sum(labels.size for _, _, labels in splits_of(dataset))
    return SpaceCheck(layout).reserve(raw_bytes(dataset), images, tuple(dataset.x_train.shape[1:]))


def write_ingest(dataset: RawDataset, report: dict[str, Any], layout: Layout, staging: Path | None = None,
                 space: SpaceCheck | None = None) -> None:
    """The file edge of the stage: raw arrays, report JSON and the sample grid, after the space check.

    `staging` and `space`: the new data/raw that `run_ingest`'s ImageStore decoded the images into (only
    the rest is checked and written; the caller swaps it in), and the check that reserved them.
    Without them, the whole dataset is checked, then written to a new data/raw swapped in at once.
    """
    from pipeline import plots

    if staging is None:
        check_space(dataset, layout)
        save_raw(dataset, layout.raw_dir)
    else:
        space = space or SpaceCheck(layout)
        pending = [array for split, images, labels in splits_of(dataset) for array in (labels, images)
                   if array is labels or not in_directory(images, staging, f"x_{split}")]
        space.reserve(sum(npy_bytes(array) for array in pending))
        write_raw(dataset, staging)
    figure = plots.samples_per_class_figure(dataset.x_train, dataset.y_train, dataset.class_names)
    write_json(layout.ingest_report, report)
    plots.save_figure(figure, layout.samples_figure)


def run_ingest(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """The whole `ingest` stage: read, validate, write data/raw/ and reports/data/; return the report.

    The sources decode into the new data/raw itself (an ImageStore in its staging directory), which is
    swapped in only when everything succeeded: a failure leaves the previous data/raw and reports as
    they were.
    """
    layout = Layout(root)
    space = SpaceCheck(layout)
    with atomic_directory(layout.raw_dir) as staging:
        dataset, report = ingest(config.data, config.seed, root, ImageStore(staging, space.reserve))
        write_ingest(dataset, report, layout, staging, space)
    return report
