"""Large data sets for `benchmarks/scale.py`, generated offline from the bundled 5,000 MNIST digits.

Each image is a copy of a bundled digit (taken in turn) under its own random affine transform: a
rotation of up to +-15 degrees about the centre and a sub-pixel shift of up to +-3 px (bilinear,
rounded to uint8). The transforms are continuous draws, so the copies are distinct bytes: the prepare
stage's check for val/test images identical to train images does not reject them. Everything is
drawn from one seeded generator, chunk by chunk, so the same size and seed give the same files and the
generator holds one chunk in memory, not the data set.

- `write_idx`: the `idx` source's four files (pipeline/sources.py IDX_FILES): N images in all, the last
  N // 7 as the t10k test files (MNIST's 60,000 / 10,000 proportion; `read_idx` needs all four).
- `write_folder`: the `folder` source, one sub-directory per class of 64x64 RGB PNGs: the digit
  upscaled and tinted with its class's colour times a random brightness.

Each data set is written to a temporary name and renamed when complete, so a cached copy under
`--data-dir` is always whole and a rerun skips generation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MAX_SHIFT_PIXELS = 3.0
MAX_ROTATION_DEGREES = 15.0
CHUNK_IMAGES = 10_000
# One colour per digit class (RGB 0-255) for the colour data set.
CLASS_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                          [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
                         dtype=np.float32)


def transformed_digits(count: int, seed: int, chunk_images: int = CHUNK_IMAGES
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`count` shifted and rotated copies of the bundled digits, in chunks of uint8 (n, 28, 28) and labels."""
    from scipy.ndimage import affine_transform

    from pipeline.sources import read_bundled

    bundled = read_bundled()
    digits, labels = bundled.x_train[..., 0].astype(np.float32), bundled.y_train
    random = np.random.default_rng(seed)
    centre = (np.array(digits.shape[1:]) - 1) / 2
    # The bundled sample is sorted by class: go through it in a shuffled order, so that every chunk
    # (and the IDX test split, the last chunk) holds every class.
    order = random.permutation(len(digits))
    for start in range(0, count, chunk_images):
        size = min(chunk_images, count - start)
        sources = order[np.arange(start, start + size) % len(digits)]
        angles = np.deg2rad(random.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, size))
        shifts = random.uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS, (size, 2))
        images = np.empty((size, *digits.shape[1:]), dtype=np.uint8)
        for index, (source, angle, shift) in enumerate(zip(sources, angles, shifts, strict=True)):
            cosine, sine = np.cos(angle), np.sin(angle)
            matrix = np.array([[cosine, -sine], [sine, cosine]])
            # affine_transform maps output coordinates to input ones: rotate about the centre, then shift.
            offset = centre - matrix @ (centre + shift)
            moved = affine_transform(digits[source], matrix, offset=offset, order=1, mode="constant")
            images[index] = np.clip(np.rint(moved), 0, 255).astype(np.uint8)
        yield images, labels[sources]


def _idx_header(shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(dimension.to_bytes(4, "big") for dimension in shape)


def write_idx(directory: Path, count: int, seed: int) -> Path:
    """The four IDX files of `count` 28x28 images (the last count // 7 as the test split), unless cached."""
    from pipeline.sources import IDX_FILES

    if directory.is_dir():
        return directory
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    test_count = count // 7
    train_count = count - test_count
    files = {key: (staging / name).open("wb") for key, name in IDX_FILES.items()}
    try:
        files["x_train"].write(_idx_header((train_count, 28, 28)))
        files["y_train"].write(_idx_header((train_count,)))
        files["x_test"].write(_idx_header((test_count, 28, 28)))
        files["y_test"].write(_idx_header((test_count,)))
        written = 0
        for images, labels in transformed_digits(count, seed):
            # Split the chunk at the train/test boundary.
            cut = max(0, min(len(labels), train_count - written))
            files["x_train"].write(images[:cut].tobytes())
            files["y_train"].write(labels[:cut].astype(np.uint8).tobytes())
            files["x_test"].write(images[cut:].tobytes())
            files["y_test"].write(labels[cut:].astype(np.uint8).tobytes())
            written += len(labels)
    finally:
        for handle in files.values():
            handle.close()
    staging.rename(directory)
    return directory


def write_folder(directory: Path, count: int, seed: int, size: int = 64) -> Path:
    """`count` size x size RGB PNGs in one folder per class ("0" .. "9"), unless cached."""
    from PIL import Image

    if directory.is_dir():
        return directory
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for label in range(len(CLASS_COLOURS)):
        (staging / str(label)).mkdir(parents=True)
    brightness = np.random.default_rng(seed + 1)
    written = 0
    for images, labels in transformed_digits(count, seed):
        scales = brightness.uniform(0.6, 1.0, len(labels)).astype(np.float32)
        for image, label, scale in zip(images, labels, scales, strict=True):
            large = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
            tinted = large[..., np.newaxis] / 255.0 * CLASS_COLOURS[label] * scale
            Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8), mode="RGB").save(
                staging / str(label) / f"{written:06d}.png")
            written += 1
    staging.rename(directory)
    return directory


def link_tree(source: Path, destination: Path) -> None:
    """Hard-link a generated data set into a project copy (no second copy of its bytes on disk)."""
    shutil.copytree(source, destination, copy_function=os.link)


def main() -> None:
    """`python -m benchmarks.scale_data idx|folder DIRECTORY COUNT SEED`: scale.py generates in a process of
    its own, so that its own memory (the floor of every stage's ru_maxrss, see scale.py) stays small."""
    import sys

    kind, directory, count, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if kind not in ("idx", "folder"):
        raise ValueError(f"the kind of data set is idx or folder, not {kind!r}")
    (write_idx if kind == "idx" else write_folder)(directory, count, seed)


if __name__ == "__main__":
    main()
