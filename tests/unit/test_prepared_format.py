"""data/prepared/ as row numbers into the uint8 data/raw/ arrays, and the training stream that reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PrepareConfig, TrainConfig
from pipeline.dataset import (
    RawDataset,
    RawRows,
    gather_rows,
    load_prepared,
    model_outputs,
    normalise,
    raw_digest,
    save_prepared,
    save_raw,
)
from pipeline.errors import DataError
from pipeline.layout import Layout
from pipeline.prepare import prepare, split_rows
from pipeline.train import _dataset


def raw_dataset(count: int, seed: int = 0, official_test: bool = False) -> RawDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 6, 6, 1), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % 3
    test = {"x_test": rng.integers(0, 256, (count // 4, 6, 6, 1), dtype=np.uint8),
            "y_test": labels[: count // 4].copy()} if official_test else {}
    return RawDataset(x_train=images, y_train=labels, class_names=["a", "b", "c"], source="generated", **test)


def write_project(root: Path, raw: RawDataset) -> Layout:
    """data/raw/ and data/prepared/ as the ingest and prepare stages write them."""
    layout = Layout(root)
    save_raw(raw, layout.raw_dir)
    rows, sources, report = split_rows(raw, PrepareConfig(val_fraction=0.2, test_fraction=0.2), seed=3)
    save_prepared(layout.prepared_dir, rows, sources, report["class_names"], report["input_shape"], raw_digest(raw))
    return layout


@pytest.mark.parametrize("official_test", [False, True])
def test_loaded_splits_are_the_prepared_uint8_images(tmp_path: Path, official_test: bool) -> None:
    raw = raw_dataset(400, official_test=official_test)
    expected, _ = prepare(raw, PrepareConfig(val_fraction=0.2, test_fraction=0.2), seed=3)
    loaded = load_prepared(write_project(tmp_path, raw))
    for name in ("train", "val", "test"):
        images, labels = loaded.split(name)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert np.array_equal(images, expected.split(name)[0]) and np.array_equal(labels, expected.split(name)[1])
    if official_test:
        assert np.array_equal(loaded.x_test, raw.x_test)  # the source's own test split, whole
    assert loaded.input_shape == (6, 6, 1)


def test_prepared_data_costs_row_numbers_not_images(tmp_path: Path) -> None:
    raw = raw_dataset(2000)
    layout = write_project(tmp_path, raw)
    arrays = sum(path.stat().st_size for path in layout.prepared_dir.glob("*.npy"))
    assert arrays <= 8 * 2000 + 3 * 128  # int64 row numbers and three .npy headers
    assert arrays < raw.x_train.nbytes / 4  # these 6x6 images are 36 bytes; a 28x28 digit is 784


def test_tuning_loads_no_test_image(tmp_path: Path) -> None:
    layout = write_project(tmp_path, raw_dataset(400))
    (layout.prepared_dir / "test.npy").unlink()
    loaded = load_prepared(layout, splits=("train", "val"))
    assert loaded.x_test is None and loaded.y_test is None and loaded.x_train is not None
    with pytest.raises(DataError, match="the test split was not loaded"):
        loaded.split("test")


def test_labels_only_splits_come_without_images(tmp_path: Path) -> None:
    layout = write_project(tmp_path, raw_dataset(400))
    loaded = load_prepared(layout, labels_only=("train",))
    full = load_prepared(layout)
    assert loaded.x_train is None and np.array_equal(loaded.y_train, full.y_train)
    assert np.array_equal(loaded.x_test, full.x_test) and loaded.input_shape == (6, 6, 1)


def test_prepared_rows_of_other_raw_data_are_refused(tmp_path: Path) -> None:
    """Rows index one version of data/raw; after a new ingest without a new prepare they would pick
    other images, so the loader compares the digests and says what to rerun."""
    layout = write_project(tmp_path, raw_dataset(400))
    save_raw(raw_dataset(400, seed=1), layout.raw_dir)
    with pytest.raises(DataError, match=r"made from other data than .*data/raw holds now.*dvc repro -f prepare"):
        load_prepared(layout)


def test_prepared_data_of_the_float32_format_is_refused(tmp_path: Path) -> None:
    layout = write_project(tmp_path, raw_dataset(100))
    meta_path = layout.prepared_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["format"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json: data/prepared is in format 1, this code reads format 2"):
        load_prepared(layout)


def test_rows_outside_the_raw_array_are_refused(tmp_path: Path) -> None:
    layout = write_project(tmp_path, raw_dataset(100))
    np.save(layout.prepared_dir / "val.npy", np.array([0, 100], dtype=np.int64))
    with pytest.raises(DataError, match=r"val.npy: expected row numbers of x_train.npy \(0..99\)"):
        load_prepared(layout)


def test_gathered_rows_in_any_order_over_many_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import dataset

    images = np.random.default_rng(0).integers(0, 256, (500, 6, 6, 1), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    monkeypatch.setattr(dataset, "GATHER_WINDOW_BYTES", 36 * 7)  # seven images a window: 72 windows
    rows = np.random.default_rng(1).choice(500, size=300, replace=False)  # not sorted
    assert np.array_equal(gather_rows(tmp_path / "x.npy", rows), images[rows])
    # Sparse rows (under dataset.SPARSE_ROWS of the bytes they span) are read with MADV_RANDOM.
    assert np.array_equal(gather_rows(tmp_path / "x.npy", np.array([3, 3, 499])), images[[3, 3, 499]])
    sparse = np.sort(np.random.default_rng(2).choice(500, size=40, replace=False))
    assert np.array_equal(gather_rows(tmp_path / "x.npy", sparse), images[sparse])
    assert gather_rows(tmp_path / "x.npy", np.array([], dtype=np.int64)).shape == (0, 6, 6, 1)
    assert np.array_equal(gather_rows(tmp_path / "x.npy", np.arange(100, 260)), images[100:260])  # one read
    assert np.array_equal(gather_rows(tmp_path / "x.npy", np.arange(499, 500)), images[499:])


def test_raw_rows_read_what_they_are_indexed_with(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 1), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    rows = np.array([40, 2, 17, 9, 33, 5])
    view, split = RawRows(tmp_path / "x.npy", rows), images[rows]
    assert (view.shape, view.dtype, view.ndim, len(view), view.nbytes) == \
        (split.shape, split.dtype, 4, 6, split.nbytes)
    for index in (0, -1, 3, slice(1, 4), slice(None, None, 2), [5, 0, 0], np.array([True, False] * 3),
                  (2, slice(None), 1, 0), (slice(1, 3), 0)):
        assert np.array_equal(view[index], split[index]), index
    assert np.array_equal(np.asarray(view), split) and np.asarray(view, dtype=np.float32).dtype == np.float32


LOAD_PEAK = """
import sys
import numpy as np
from pipeline import dataset

def peak():  # VmHWM: this process's own peak RSS (ru_maxrss starts at the parent's at fork)
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

before = peak()
data = dataset.load_prepared(sys.argv[1])
batch = data.x_train[np.arange(0, 256)]
loaded = peak()
whole = np.asarray(data.x_train)
print(loaded - before, peak() - before, len(whole))
"""


def test_loading_the_splits_holds_none_of_their_images(tmp_path: Path) -> None:
    """A process that loads the prepared splits of 80,000 28x28 images (63 MB) and reads one batch
    grows by the labels and row numbers (measured 2.8 MB), not by a split's images; reading the
    training split whole (the control, which can fail) grows by its 40 MB and more."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    raw = RawDataset(x_train=rng.integers(0, 256, (80_000, 28, 28, 1), dtype=np.uint8),
                     y_train=np.arange(80_000, dtype=np.int64) % 3, class_names=["a", "b", "c"], source="generated")
    write_project(tmp_path, raw)
    loaded, whole, count = (int(value) for value in subprocess.run(
        [sys.executable, "-c", LOAD_PEAK, str(tmp_path)], capture_output=True, text=True, check=True).stdout.split())
    assert whole > loaded + count * 784 * 0.9, (loaded, whole)
    assert loaded < 12e6, loaded


GATHER_PEAK = """
import sys
import numpy as np
from pipeline import dataset

def peak():  # VmHWM: this process's own peak RSS (ru_maxrss starts at the parent's at fork)
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

rows = np.arange(0, 80_000, 2)  # every other image: the whole file is touched, half of it copied
before = peak()
if sys.argv[2] == "gather":
    dataset.GATHER_WINDOW_BYTES = 4 << 20
    result = dataset.gather_rows(dataset.Path(sys.argv[1]), rows)
else:
    result = np.load(sys.argv[1], mmap_mode="r")[rows]
print(peak() - before)
"""


def test_gathering_does_not_hold_the_mapped_file(tmp_path: Path) -> None:
    """The peak growth of a process gathering half the rows of a 63 MB file: the 31 MB result and one
    4 MB window, against the result and the whole file for a plain indexing of np.load's memory map."""
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (80_000, 28, 28, 1), dtype=np.uint8))
    growth = {how: int(subprocess.run([sys.executable, "-c", GATHER_PEAK, str(tmp_path / "x.npy"), how],
                                      capture_output=True, text=True, check=True).stdout)
              for how in ("gather", "plain")}
    result = 40_000 * 784
    assert growth["plain"] > result + 50e6, growth  # the mapped file counts: the comparison can fail
    assert growth["gather"] < result + 16e6, growth  # measured 40.6 MB: the result and a 4 MB window, twice


def test_chunked_predictions_equal_one_call_on_the_normalised_split() -> None:
    import keras

    images = np.random.default_rng(0).integers(0, 256, (70, 6, 6, 1), dtype=np.uint8)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    whole = model.predict(normalise(images), batch_size=16, verbose=0)
    from pipeline import dataset

    saved = dataset.CHUNK_BYTES
    dataset.CHUNK_BYTES = 20 * 36 * 4  # float32 of 20 images: chunks of 16 (one batch), so 70 take five
    try:
        chunked = model_outputs(model, images, 16)
    finally:
        dataset.CHUNK_BYTES = saved
    assert np.array_equal(chunked, whole)


def _whole_array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epochs: range) -> list:
    """The input pipeline before the stream: the whole normalised split as one tensor, shuffled per epoch."""
    import tensorflow as tf

    examples = tf.data.Dataset.from_tensor_slices((normalise(images), labels)).cache()
    batches = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(
        lambda epoch: examples.shuffle(len(labels), seed=seed * 1000 + epoch, reshuffle_each_iteration=False)
        .batch(batch_size))
    return list(batches.as_numpy_iterator())


def test_the_stream_gives_the_batches_the_whole_array_pipeline_gave(tmp_path: Path) -> None:
    """Shuffling row numbers draws the order shuffling the images drew: same batches, same models.
    From epoch 2 on too, as a run resumed after epoch 1 asks for them."""
    raw = raw_dataset(300)
    np.save(tmp_path / "x.npy", raw.x_train)
    from_disk = RawRows(tmp_path / "x.npy", np.arange(300))
    settings = TrainConfig(batch_size=32, epochs=3)
    for epochs in (range(0, 3), range(1, 3)):
        streamed = list(_dataset(raw.x_train, raw.y_train, settings, 3, seed=5, epochs=epochs).as_numpy_iterator())
        expected = _whole_array_batches(raw.x_train, raw.y_train, 32, 5, epochs)
        assert all(np.array_equal(streamed_batch[0], batch[0]) for streamed_batch, batch in zip(
            _dataset(from_disk, raw.y_train, settings, 3, seed=5, epochs=epochs).as_numpy_iterator(), streamed,
            strict=True))  # the images as the stages get them: RawRows of data/raw
        assert len(streamed) == len(expected) == len(epochs) * 10
        for (images, labels), (want_images, want_labels) in zip(streamed, expected, strict=True):
            assert images.dtype == np.float32 and np.array_equal(images, want_images)
            assert np.array_equal(labels, want_labels)


def test_the_stream_holds_no_split_in_its_graph() -> None:
    """The whole-array pipeline put the split into the dataset's graph as a constant (TensorFlow's 2 GB
    limit); the stream's graph is the same size for 100 images as for 20,000."""
    import tensorflow as tf

    def graph_bytes(count: int, stream: bool) -> int:
        raw = raw_dataset(count)
        if stream:
            data = _dataset(raw.x_train, raw.y_train, TrainConfig(batch_size=32), 3, seed=0, epochs=range(0, 1))
        else:
            data = tf.data.Dataset.from_tensor_slices((normalise(raw.x_train), raw.y_train)).batch(32)
        return len(data._as_serialized_graph().numpy())

    assert graph_bytes(20_000, stream=False) > graph_bytes(100, stream=False) + 20_000 * 36  # the check can fail
    assert abs(graph_bytes(20_000, stream=True) - graph_bytes(100, stream=True)) < 200
