"""Random training batches from an image file larger than the memory it may use: `dataset.gather_rows`
with and without MADV_RANDOM (issue 16).

    python -m benchmarks.gather [--images 2000000] [--limit 4e8] [--seconds 20] [--rounds 2]

Writes a .npy of `--images` random 28x28 uint8 images (2,000,000: 1.57 GB) to a temporary directory,
then, each arm a process of its own inside a cgroup memory group of `--limit` bytes (benchmarks/cgroup.py:
root, cgroup v1) and with the file's pages evicted from the page cache, gathers sorted random batches
of 128 rows for `--seconds` and prints images/s. The
"read-around" arm sets `dataset.SPARSE_ROWS = 0`, so no batch is read with MADV_RANDOM: each page fault
then reads the disk's read-ahead window (`/sys/block/*/queue/read_ahead_kb`) around one image.
Measured (2 cores of an Intel Xeon, virtio disk with 8 MB read-ahead, 0.4 GB limit): 175-234 images/s
read-around, 8,500-9,900 with MADV_RANDOM (two runs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cgroup import CgroupError, MemoryGroup
from benchmarks.common import REPO, bench_env

BATCH = 128


def gather_rate(path: Path, seconds: float, read_around: bool) -> float:
    """Images/s of `gather_rows` on sorted random batches of BATCH rows (in this process)."""
    from pipeline import dataset

    if read_around:
        dataset.SPARSE_ROWS = 0
    count = dataset.npy_header(path)[0][0]
    random = np.random.default_rng(0)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        dataset.gather_rows(path, np.sort(random.choice(count, BATCH, replace=False)))
        images += BATCH
    return images / (time.perf_counter() - started)


def write_images(path: Path, images: int) -> None:
    """A .npy of random (images, 28, 28, 1) uint8, a 64 MB chunk at a time."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, 28, 28, 1))
    random = np.random.default_rng(1)
    step = (64 << 20) // (28 * 28)
    for start in range(0, images, step):
        array[start:start + step] = random.integers(0, 256, array[start:start + step].shape, dtype=np.uint8)
    array.flush()
    del array


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first), so each arm starts from the disk."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2_000_000)
    parser.add_argument("--limit", type=float, default=4e8, help="bytes of the memory group")
    parser.add_argument("--seconds", type=float, default=20.0, help="of each arm")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=["read-around", "random"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(f"{gather_rate(arguments.path, arguments.seconds, arguments.worker == 'read-around'):.0f}")
        return
    try:
        group = MemoryGroup.create(arguments.limit)
    except CgroupError as error:
        parser.error(str(error))
    with group, tempfile.TemporaryDirectory(prefix="bench-gather-") as scratch:
        path = Path(scratch) / "x_train.npy"
        write_images(path, arguments.images)
        for round_index in range(arguments.rounds):
            for arm in ("read-around", "random"):
                evict(path)
                group.reset_peak()
                worker = subprocess.run([sys.executable, "-m", "benchmarks.gather", "--worker", arm, "--path",
                                         str(path), "--seconds", str(arguments.seconds)], cwd=REPO, env=bench_env(),
                                        capture_output=True, text=True, preexec_fn=group.join, check=True)
                print(f"round {round_index + 1} {arm:>11}: {float(worker.stdout.split()[-1]):>8,.0f} images/s "
                      f"(group peak {group.usage()['peak_bytes'] / 1e6:,.0f} MB of {group.limit_bytes / 1e6:,.0f})",
                      flush=True)


if __name__ == "__main__":
    main()
