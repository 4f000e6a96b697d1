"""The five sources on small data made here (and the real bundled sample), and corrupt inputs."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.dataset import validate_dataset
from pipeline.images import check_image_header
from pipeline.ingest import ingest
from pipeline.sources import (
    DataError,
    RawDataset,
    keras_cache_dir,
    read_bundled,
    read_csv,
    read_folder,
    read_idx,
    read_idx_file,
    read_keras,
)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file as distributed for MNIST: magic 0x0000080N, N big-endian dims, the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def make_idx_dir(directory: Path, train: int = 30, test: int = 10, compress: bool = False) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (train, 28, 28)), compress)
    write_idx(directory / "train-labels-idx1-ubyte", np.arange(train) % 10, compress)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (test, 28, 28)), compress)
    write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(test) % 10, compress)
    return directory


# --------------------------------------------------------------------------- bundled


def test_bundled_sample_is_real_mnist() -> None:
    dataset = read_bundled()
    assert dataset.x_train.shape == (5000, 28, 28, 1) and dataset.x_train.dtype == np.uint8
    assert np.bincount(dataset.y_train).tolist() == [500] * 10
    assert dataset.x_test is None  # no official test split: prepare carves one
    # A real digit: ink in the middle, background in the corners.
    assert dataset.x_train[:, 10:18, 10:18].mean() > 5 * dataset.x_train[:, :4, :4].mean()


# --------------------------------------------------------------------------- keras


def test_keras_source_offline_fails_fast_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Honoured only if Keras is first imported in this test: it reads KERAS_HOME once, at import (the
    # integration test gives it to a fresh process). Either way the message names the cache Keras uses.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # Offline even on a machine with network (urllib reads the proxy when it first opens a URL here).
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    if any((keras_cache_dir() / "fashion-mnist").glob("*.gz")):
        pytest.skip(f"{keras_cache_dir()} holds a cached Fashion-MNIST: nothing to download, nothing fails")
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        read_keras("fashion_mnist", timeout_seconds=5)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "keras.datasets.fashion_mnist" in message and "data.source: bundled" in message
    assert f"caches in {keras_cache_dir()}." in message


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path: Path, compress: bool) -> None:
    dataset = read_idx(make_idx_dir(tmp_path / "idx", compress=compress), None)
    assert dataset.x_train.shape == (30, 28, 28, 1) and dataset.x_test.shape == (10, 28, 28, 1)
    assert dataset.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert dataset.class_names == [str(digit) for digit in range(10)]


def test_truncated_idx_names_file_and_sizes(tmp_path: Path) -> None:
    directory = make_idx_dir(tmp_path / "idx")
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError) as caught:
        read_idx(directory, None)
    message = str(caught.value)
    assert str(images) in message and "truncated" in message
    assert str(16 + 30 * 28 * 28) in message and str(16 + 30 * 28 * 28 - 100) in message


def test_wrong_magic_number(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.arange(10))
    with pytest.raises(DataError, match="wrong magic number 0x00000801, expected 0x00000803"):
        read_idx_file(path, expected_dims=3)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    directory = make_idx_dir(tmp_path / "idx")
    write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(9) % 10)
    with pytest.raises(DataError, match="holds 10 images but t10k-labels-idx1-ubyte holds 9 labels"):
        read_idx(directory, None)


def test_missing_idx_file(tmp_path: Path) -> None:
    directory = make_idx_dir(tmp_path / "idx")
    (directory / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte"):
        read_idx(directory, None)


def traced_peak(read: Callable[[], RawDataset]) -> tuple[RawDataset, int]:
    """What `read` returns and the peak of the memory it allocated (tracemalloc: numpy's and pandas'
    buffers too)."""
    tracemalloc.start()
    try:
        dataset = read()
        return dataset, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- csv


def write_csv(path: Path, rows: int = 20, pixels: int = 784, header: bool = True) -> Path:
    rng = np.random.default_rng(1)
    lines = ["label," + ",".join(f"pixel{index}" for index in range(pixels))] if header else []
    for row in range(rows):
        lines.append(",".join(map(str, [row % 10, *rng.integers(0, 256, pixels)])))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path: Path, header: bool) -> None:
    dataset = read_csv(write_csv(tmp_path / "digits.csv", header=header), 28, 28, 1, None)
    assert dataset.x_train.shape == (20, 28, 28, 1) and dataset.y_train[:3].tolist() == [0, 1, 2]


def test_csv_is_parsed_in_chunks_into_one_uint8_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows, labels and the line numbers of errors come out as if parsed whole, and the peak is the uint8
    images plus one chunk's copies (parsed whole, the table's int64 and float64 copies peaked at 27
    times the images)."""
    from pipeline import sources

    monkeypatch.setattr(sources, "CSV_CHUNK_ROWS", 256)
    path = write_csv(tmp_path / "digits.csv", rows=3000)  # 12 chunks, the last one short
    dataset, peak = traced_peak(lambda: read_csv(path, 28, 28, 1, None))
    rng = np.random.default_rng(1)
    expected = np.stack([rng.integers(0, 256, 784) for _ in range(3000)])  # write_csv's own draws
    assert dataset.x_train.shape == (3000, 28, 28, 1) and np.array_equal(dataset.x_train.reshape(3000, -1), expected)
    assert dataset.y_train.tolist() == [row % 10 for row in range(3000)]
    chunk_copies = 256 * 785 * 8 * 8  # measured: 10.8 MB in all (images and copies)
    assert peak < dataset.x_train.nbytes + chunk_copies, peak  # whole: about 27 x 2.4 MB = 64 MB
    lines = path.read_text().splitlines()
    lines[2900] = lines[2900].replace(",", ",x", 1)  # line 2901 of the file, in the twelfth chunk
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"digits.csv: line 2901, column 'pixel0' is not a number: 'x"):
        read_csv(path, 28, 28, 1, None)


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "digits.csv", pixels=783)
    with pytest.raises(DataError, match=r"784 columns, expected 785 .*28x28x1"):
        read_csv(path, 28, 28, 1, None)


def test_csv_text_in_pixel_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "digits.csv")
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[5] = "dark"
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4, column 'pixel4' is not a number: 'dark'"):
        read_csv(path, 28, 28, 1, None)


def test_label_out_of_range_for_declared_classes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "digits.csv", rows=12)
    lines = path.read_text().splitlines()
    lines[1] = "11" + lines[1][1:]
    path.write_text("\n".join(lines) + "\n")
    dataset = read_csv(path, 28, 28, 1, [str(digit) for digit in range(10)])
    with pytest.raises(DataError, match=r"label 11 is outside 0\.\.9"):
        validate_dataset(dataset)


def test_csv_with_a_million_columns_is_refused_from_its_first_line(tmp_path: Path) -> None:
    """Issue 17 #9: the column count is judged on the first line, before pandas reads the body. Before,
    the same message came after parsing the whole file (50 s and 2.4 GB for the reported file); here
    the memory the check allocates is bounded (tracemalloc sees numpy's and pandas' buffers too)."""
    path = tmp_path / "wide.csv"
    row = ",".join(["0"] * 1_000_000)
    path.write_text("\n".join([row] * 4) + "\n")  # 8 MB
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read_csv(path, 28, 28, 1, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "wide.csv: more than" in str(caught.value) and "expected 785" in str(caught.value)
    assert peak < 1_000_000, f"read {peak:,} bytes of a file refused by its first line"


def test_csv_first_line_with_too_few_columns_names_the_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "digits.csv", pixels=10)
    with pytest.raises(DataError, match=r"11 columns, expected 785 .*refused on line 1"):
        read_csv(path, 28, 28, 1, None)


# --------------------------------------------------------------------------- folder


def decompression_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG that declares width x height grey pixels. Only its header matters to the check (nothing
    is decoded), so it holds the compressed bytes of its first rows only: 2 KB instead of the
    875 KB of zeros the reported file had; PIL refuses both alike on opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_in_a_folder_is_refused_by_its_declared_size(tmp_path: Path) -> None:
    """Issue 17 #8: before, PIL's DecompressionBombError escaped as a traceback (exit 1)."""
    root = make_folder(tmp_path / "pets")
    decompression_bomb(root / "cat" / "bomb.png")
    with pytest.raises(DataError) as caught:
        read_folder(root, 28, 28, 1, None)
    assert "bomb.png" in str(caught.value) and "900000000 pixels" in str(caught.value)


def test_image_declaring_a_large_size_is_refused_before_decoding(tmp_path: Path) -> None:
    """Above Image.MAX_IMAGE_PIXELS but below twice that, PIL only warns: the size check refuses it
    without decoding (and without the warning)."""
    path = decompression_bomb(tmp_path / "large.png", width=10_000, height=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        problem = check_image_header(path, 28, 28)
    assert problem is not None and "large.png: image is 10000x10000 (width x height), expected 28x28" in problem




def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4,
                size: tuple[int, int] = (28, 28), mode: str = "L") -> Path:
    rng = np.random.default_rng(2)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{index}.png")
    return root


def test_folder_grayscale(tmp_path: Path) -> None:
    dataset = read_folder(make_folder(tmp_path / "pets"), 28, 28, 1, None)
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.x_train.shape == (8, 28, 28, 1) and sorted(set(dataset.y_train)) == [0, 1]


def test_folder_rgb(tmp_path: Path) -> None:
    dataset = read_folder(make_folder(tmp_path / "pets", size=(16, 12), mode="RGB"), 12, 16, 3, None)
    assert dataset.x_train.shape == (8, 12, 16, 3)


def test_folder_non_image_file_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / "dog" / "notes.png").write_text("not an image")
    (root / "cat" / "readme.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        read_folder(root, 28, 28, 1, None)
    message = str(caught.value)
    assert "2 unusable file(s)" in message and "notes.png" in message and "readme.txt" in message


def test_folder_empty_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / "bird").mkdir()
    with pytest.raises(DataError, match="bird: empty class folder"):
        read_folder(root, 28, 28, 1, None)


def test_folder_image_of_another_size(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(root / "cat" / "big.png")
    with pytest.raises(DataError, match=r"big.png: image is 30x30 .* expected 28x28"):
        read_folder(root, 28, 28, 1, None)


# --------------------------------------------------------------------------- ingest


def test_ingest_subsample_is_stratified_and_seeded() -> None:
    config = DataConfig(max_images=200)
    first, report = ingest(config, seed=3)
    second, _ = ingest(config, seed=3)
    assert first.y_train.size == 200 and np.bincount(first.y_train).tolist() == [20] * 10
    assert np.array_equal(first.x_train, second.x_train)
    assert report["splits"]["train"]["per_class"]["7"] == 20


def test_validation_warns_on_imbalance() -> None:
    labels = np.array([0] * 10 + [1] * 2)
    dataset = RawDataset(x_train=np.zeros((12, 4, 4, 1), np.uint8), y_train=labels, class_names=["a", "b"],
                         source="test")
    assert any("class imbalance" in warning for warning in validate_dataset(dataset))


def test_validation_rejects_class_without_images() -> None:
    dataset = RawDataset(x_train=np.zeros((4, 4, 4, 1), np.uint8), y_train=np.zeros(4, np.int64),
                         class_names=["a", "b"], source="test")
    with pytest.raises(DataError, match=r"no training images for class\(es\) \['b'\]"):
        validate_dataset(dataset)


# --------------------------------------------------------------------------- issue 16: large folders and idx files


def test_folder_names_truncated_and_header_problems_in_one_run(tmp_path: Path) -> None:
    """A truncated PNG passes the header check and fails only when decoded: it is still reported with the
    files the header check refused, in file order, in one message."""
    root = make_folder(tmp_path / "pets")
    cut = root / "cat" / "1.png"
    cut.write_bytes(cut.read_bytes()[:60])  # the signature and IHDR intact, the pixel data cut
    (root / "dog" / "0.png").write_text("not an image")
    assert check_image_header(cut, 28, 28) is None
    with pytest.raises(DataError) as caught:
        read_folder(root, 28, 28, 1, None)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"2 unusable file(s) under {root}:"
    assert lines[1].startswith(f"  {cut}: not a readable PNG/JPEG image")
    assert lines[2].startswith(f"  {root / 'dog' / '0.png'}: not a readable PNG/JPEG image")


def test_folder_reports_progress_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import pipeline.sources

    monkeypatch.setattr(pipeline.sources, "PROGRESS_SECONDS", 0.0)  # a line per file instead of every 10 s
    root = make_folder(tmp_path / "pets")
    read_folder(root, 28, 28, 1, None)
    captured = capsys.readouterr()
    assert f"[ingest] checked 8/8 files under {root}" in captured.err
    assert f"[ingest] decoded 8/8 files under {root}" in captured.err
    assert captured.out == ""


def test_folder_holds_one_copy_of_the_images(tmp_path: Path) -> None:
    """2,000 PNGs: the peak is the final array and about 100 bytes per file of listing, not a list of
    decoded images and their np.stack (2.7x the array before issue 16; 1.2x after, on 5,000 files)."""
    digits = read_bundled()
    root = tmp_path / "digits"
    for index in np.linspace(0, 4999, 2000).astype(int):  # 2,000 of the 5,000, spread over all of them
        folder = root / str(digits.y_train[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.x_train[index, :, :, 0]).save(folder / f"{index:04d}.png")
    read_folder(make_folder(tmp_path / "warm-up"), 28, 28, 1, None)  # PIL's plug-ins imported outside the count
    dataset, peak = traced_peak(lambda: read_folder(root, 28, 28, 1, None))
    assert dataset.x_train.shape == (2000, 28, 28, 1)
    assert peak < 1.5 * dataset.x_train.nbytes + 100_000, f"peak {peak:,} for {dataset.x_train.nbytes:,} bytes"


def test_gzip_idx_is_read_into_the_array_without_a_second_copy(tmp_path: Path) -> None:
    """GzipFile.read() joins its chunks: 2.0x the array before issue 16; now the array and one chunk."""
    from pipeline.sources import IDX_CHUNK_BYTES

    images = np.random.default_rng(0).integers(0, 256, (40_000, 28, 28), dtype=np.uint8)  # 31 MB
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, compress=True)
    tracemalloc.start()
    try:
        array = read_idx_file(path, expected_dims=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(array, images)
    assert peak < array.nbytes + IDX_CHUNK_BYTES + 1_000_000, f"peak {peak:,} for {array.nbytes:,} bytes"


def test_ingest_needs_the_npy_files_and_as_much_again_for_dvc(tmp_path: Path) -> None:
    """The needed figure is exactly what save_raw writes (every .npy file), plus the allowance for
    meta.json and the reports; doubled in a DVC repository (its cache copy), not when DVC only links."""
    from pipeline.dataset import save_raw
    from pipeline.ingest import INGEST_OVERHEAD_BYTES, check_space, raw_bytes
    from pipeline.layout import Layout

    dataset = RawDataset(x_train=np.zeros((30, 28, 28, 1), np.uint8), y_train=np.arange(30) % 2,
                         x_test=np.zeros((10, 28, 28, 1), np.uint8), y_test=np.arange(10) % 2,
                         class_names=["a", "b"], source="test")
    layout = Layout(tmp_path / "project")
    save_raw(dataset, layout.raw_dir)
    written = sum(path.stat().st_size for path in layout.raw_dir.glob("*.npy"))
    arrays = sum(array.nbytes for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))
    assert raw_bytes(dataset) == written and 0 < written - arrays <= 4 * 128  # four .npy headers
    assert list(check_space(dataset, layout).values()) == [written + INGEST_OVERHEAD_BYTES]
    (layout.root / ".dvc").mkdir()
    assert list(check_space(dataset, layout).values()) == [2 * (written + INGEST_OVERHEAD_BYTES)]
    (layout.root / ".dvc" / "config").write_text("[cache]\n    type = \"hardlink,symlink\"\n")
    assert list(check_space(dataset, layout).values()) == [written + INGEST_OVERHEAD_BYTES]
