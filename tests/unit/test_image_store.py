"""ImageStore: the sources decode a data set onto disk, into the new data/raw, instead of into memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import ImageStore, RawRows, raw_digest
from pipeline.errors import StorageError
from pipeline.ingest import pixel_statistics
from pipeline.sources import read_csv, read_idx
from tests.unit.test_sources import make_idx_dir


def test_a_stored_array_is_the_file_np_save_writes(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 1), dtype=np.uint8)
    store = ImageStore(tmp_path)
    array = store.empty("x_train", images.shape)
    array[:20] = images[:20]
    store.written(array)  # the pages written so far leave this process; what they hold stays in the file
    array[20:] = images[20:]
    sealed = store.sealed(array)
    np.save(tmp_path / "expected.npy", images)
    assert isinstance(sealed, RawRows) and sealed.path == tmp_path / "x_train.npy"
    assert (tmp_path / "x_train.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    assert np.array_equal(sealed[:], images)


def test_a_shorter_seal_leaves_the_file_np_save_writes_for_that_length(tmp_path: Path) -> None:
    """A CSV with blank lines allocates one image per line and fills fewer."""
    images = np.random.default_rng(1).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    store = ImageStore(tmp_path)
    array = store.empty("x_train", (1000, 4, 4, 3))
    array[:30] = images
    sealed = store.sealed(array, 30)
    np.save(tmp_path / "expected.npy", images)
    assert (tmp_path / "x_train.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    assert sealed.shape == (30, 4, 4, 3) and np.array_equal(np.load(tmp_path / "x_train.npy"), images)


def test_in_memory_the_store_hands_back_arrays() -> None:
    store = ImageStore()
    array = store.empty("x_train", (10, 2, 2, 1))
    array[:] = 7
    sealed = store.sealed(array, 4)
    assert type(sealed) is np.ndarray and sealed.shape == (4, 2, 2, 1) and np.all(sealed == 7)


def test_the_space_is_reserved_before_the_file_exists(tmp_path: Path) -> None:
    asked: list[tuple[int, int, tuple[int, ...]]] = []

    def no_room(nbytes: int, images: int, image_shape: tuple[int, ...]) -> None:
        asked.append((nbytes, images, image_shape))
        raise StorageError("no room")

    with pytest.raises(StorageError, match="no room"):
        ImageStore(tmp_path, no_room).empty("x_train", (100, 28, 28, 1))
    assert asked == [(128 + 100 * 784, 100, (28, 28, 1))]  # the .npy header and the images
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("on_disk", [False, True])
def test_sources_give_the_same_data_on_disk_as_in_memory(tmp_path: Path, on_disk: bool) -> None:
    def store(name: str) -> ImageStore:
        (tmp_path / name).mkdir()
        return ImageStore(tmp_path / name if on_disk else None)

    in_memory = read_idx(make_idx_dir(tmp_path / "idx"), None)
    stored = read_idx(tmp_path / "idx", None, store("idx-store"))
    assert isinstance(stored.x_train, RawRows) == on_disk
    assert raw_digest(stored) == raw_digest(in_memory)
    assert pixel_statistics(stored.x_test) == pixel_statistics(in_memory.x_test)
    csv = tmp_path / "digits.csv"
    rows = np.column_stack([in_memory.y_train, np.asarray(in_memory.x_train).reshape(30, -1)])
    csv.write_text("\n".join(",".join(str(value) for value in row) for row in rows) + "\n\n\n")  # blank lines
    from_csv = read_csv(csv, 28, 28, 1, None, store("csv-store"))
    assert np.array_equal(np.asarray(from_csv.x_train), np.asarray(in_memory.x_train))
    assert np.array_equal(from_csv.y_train, in_memory.y_train)


DECODE_PEAK = """
import sys
from pathlib import Path
from pipeline import dataset, ingest, sources

def peak():  # VmHWM: this process's own peak RSS (ru_maxrss starts at the parent's at fork)
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

dataset.CHUNK_BYTES = dataset.GATHER_WINDOW_BYTES = 4 << 20
sources.IDX_CHUNK_BYTES = 4 << 20
before = peak()
store = dataset.ImageStore(Path(sys.argv[2])) if sys.argv[3] == "disk" else dataset.ImageStore()
raw = sources.read_idx(sys.argv[1], None, store)
statistics = ingest.pixel_statistics(raw.x_train), dataset.raw_digest(raw)
print(peak() - before)
"""


def test_decoding_onto_disk_holds_no_copy_of_the_images(tmp_path: Path) -> None:
    """Reading 200,000 28x28 IDX images (157 MB), then their pixel statistics and digest, as the ingest
    stage does: in memory the process grows by the images; decoding onto disk it grows by about 20 MB
    whatever the size (measured 20 MB at 80,000 images, 22 MB at 210,000): labels, 4 MB chunks and
    windows, because the pages it fills are handed back as it goes."""
    make_idx_dir(tmp_path / "idx", train=190_000, test=10_000)
    (tmp_path / "store").mkdir()
    growth = {how: int(subprocess.run([sys.executable, "-c", DECODE_PEAK, str(tmp_path / "idx"),
                                       str(tmp_path / "store"), how], capture_output=True, text=True,
                                      check=True).stdout)
              for how in ("memory", "disk")}
    images = 200_000 * 784
    assert growth["memory"] > 0.8 * images, growth  # the control: it can fail
    assert growth["disk"] < 40e6, growth
