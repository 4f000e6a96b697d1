"""Issue 16, item 3's bad input: a folder of images a tenth of which is unusable, and a disk without room
for the new data/raw. Both fail the ingest stage before anything is written or trained, and the previous
data/raw stays byte-identical.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_params
from pipeline.errors import StorageError
from pipeline.io import describe_bytes
from tests.conftest import make_project, run, tiny_params
from tests.reliability.test_bad_input import TINY_VARIANT, _assert_clean_failure, _point_params_at, leftovers, tree

FOLDER = "data/source/digits"
IMAGES = 250
BAD_EVERY = 10  # a tenth: 25 files, so the message names 20 and counts 5 more


def _digit_folder(root: Path) -> list[str]:
    """IMAGES bundled digits as PNGs, one folder per class; their paths relative to the project's root."""
    from pipeline.sources import read_bundled

    digits = read_bundled()
    paths = []
    for index in np.linspace(0, digits.y_train.size - 1, IMAGES).astype(int):
        folder = root / FOLDER / str(digits.y_train[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.x_train[index, :, :, 0]).save(folder / f"{index:04d}.png")
        paths.append(f"{FOLDER}/{digits.y_train[index]}/{index:04d}.png")
    return paths


def _spoil(root: Path, relative: str, kind: int) -> str:
    """Make one PNG unusable in one of four ways; return its path as the error names it."""
    path = root / relative
    if kind == 0:  # garbage with a .png suffix
        path.write_bytes(os.urandom(200))
    elif kind == 1:  # truncated: the header passes, the pixel data does not decode
        path.write_bytes(path.read_bytes()[:60])
    elif kind == 2:  # another size
        Image.fromarray(np.zeros((28, 27), np.uint8)).save(path)
    else:  # not a PNG/JPEG name
        path = path.rename(path.with_suffix(".bmp"))
    return str(path.relative_to(root))


def _in_listing_order(paths: list[str]) -> list[str]:
    """The order the folder source reads files in: class folders as listed, then file names."""
    return sorted(paths, key=lambda path: (path.split("/")[-2], path.split("/")[-1]))


@pytest.fixture
def digits_project(tmp_path: Path) -> tuple[Path, list[str]]:
    """A project whose data is a folder of PNG digits, after one good ingest."""
    from pipeline.ingest import run_ingest

    project = make_project(tmp_path / "project", tiny_params(TINY_VARIANT))
    paths = _digit_folder(project)
    _point_params_at(project, {"source": "folder", "path": FOLDER})
    run_ingest(load_params(project / "params.yaml"), project)
    return project, paths


def test_a_tenth_unusable_names_the_first_20_and_counts_the_rest(digits_project: tuple[Path, list[str]]) -> None:
    project, paths = digits_project
    before = {name: tree(project / name) for name in ("data/raw", "reports/data")}
    spoiled = paths[3::BAD_EVERY]
    bad = [_spoil(project, path, number % 4) for number, path in enumerate(spoiled)]
    assert len(bad) == IMAGES // BAD_EVERY == 25
    good = set(paths) - set(spoiled)

    result = run(["python", "-m", "pipeline", "ingest"], project, check=False, timeout=300)
    _assert_clean_failure(result, f"25 unusable file(s) under {FOLDER}:", "\n  ... and 5 more")
    message = result.stderr[result.stderr.index("error: "):]
    named = [line.strip().split(": ", 1)[0] for line in message.splitlines()[1:] if line.startswith("  ") and
             not line.startswith("  ... and")]
    assert named == _in_listing_order(bad)[:20]
    assert not set(named) & good
    assert {name: tree(project / name) for name in ("data/raw", "reports/data")} == before
    assert not (project / "models").exists() and not (project / "data" / "prepared").exists()
    assert not leftovers(project)


def test_no_room_for_the_new_raw_data_fails_before_writing(digits_project: tuple[Path, list[str]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be made for real without root mounts: shutil.disk_usage is patched to report
    one byte less than the stage needs. The project is a DVC repository, so that is twice data/raw."""
    from pipeline.ingest import check_space, ingest, write_ingest
    from pipeline.layout import Layout

    project, _ = digits_project
    before = {name: tree(project / name) for name in ("data/raw", "reports/data")}
    config = load_params(project / "params.yaml")
    dataset, report = ingest(config.data, config.seed, project)
    needed = check_space(dataset, Layout(project))[project / "data"]
    real = shutil.disk_usage

    def one_byte_short(path: str | Path) -> object:
        return real(path)._replace(free=needed - 1)

    monkeypatch.setattr(shutil, "disk_usage", one_byte_short)
    with pytest.raises(StorageError) as caught:
        write_ingest(dataset, report, Layout(project))
    message = str(caught.value)
    assert message.startswith(f"{project / 'data'}: ingest needs {describe_bytes(needed)} free")
    assert f"only {describe_bytes(needed - 1)} is available" in message
    assert f"({IMAGES:,} images of 28x28x1 uint8, plus DVC's cache copy)" in message
    assert {name: tree(project / name) for name in ("data/raw", "reports/data")} == before
    assert not leftovers(project)


def test_the_stage_decodes_the_folder_into_data_raw_as_np_save_wrote_it(
        digits_project: tuple[Path, list[str]]) -> None:
    """run_ingest decodes into the new data/raw on disk (an ImageStore); the files are those that
    decoding into memory and np.save gave, and nothing else is left beside them."""
    from pipeline.sources import read_folder

    project, _ = digits_project
    in_memory = read_folder(project / FOLDER, 28, 28, 1, None)
    np.save(project / "expected.npy", in_memory.x_train)
    raw = project / "data" / "raw"
    assert (raw / "x_train.npy").read_bytes() == (project / "expected.npy").read_bytes()
    assert sorted(path.name for path in raw.iterdir()) == ["meta.json", "x_train.npy", "y_train.npy"]
    assert not leftovers(project)


def test_no_room_is_found_before_any_image_is_decoded(digits_project: tuple[Path, list[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage checks the space for each decoded array before decoding into it. A full disk cannot be
    made for real without root mounts: shutil.disk_usage is patched to report 100 KB free, less than the
    250 images' 196 KB; decode_image is wrapped only to count its calls."""
    from pipeline import sources
    from pipeline.ingest import run_ingest

    project, _ = digits_project
    before = {name: tree(project / name) for name in ("data/raw", "reports/data")}
    real_usage, real_decode = shutil.disk_usage, sources.decode_image
    decoded: list[str] = []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=100_000))
    monkeypatch.setattr(sources, "decode_image", lambda path, *args: decoded.append(path) or real_decode(path, *args))
    with pytest.raises(StorageError, match=re.escape(f"({IMAGES:,} images of 28x28x1 uint8, plus DVC's cache "
                                                     f"copy), but only {describe_bytes(100_000)} is available")):
        run_ingest(load_params(project / "params.yaml"), project)
    assert decoded == []
    assert {name: tree(project / name) for name in ("data/raw", "reports/data")} == before
    assert not leftovers(project)
