"""Input that used to escape "exit 2, one error line" (issue 17, items 7-9), through `python -m pipeline
ingest` as DVC runs it: unreadable folders and files, a decompression-bomb PNG, a CSV with a million
columns. Each fails with one `error:` line naming the path, and leaves no data/raw behind.

Unreadable means unreadable for real: the stage runs as the unprivileged user `nobody` when the tests
run as root (root reads a chmod 000 folder), see faults.as_unprivileged_user.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import BIN, make_project, tiny_params
from tests.reliability.faults import as_unprivileged_user, tool_env, world_readable_dir
from tests.reliability.test_bad_input import _assert_clean_failure, image_folder
from tests.unit.test_sources import decompression_bomb


@pytest.fixture(scope="module")
def shared() -> Path:
    """A directory the unprivileged user can reach (removed afterwards)."""
    path = world_readable_dir("issue17-input-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _project(shared: Path, name: str, data: dict) -> Path:
    params = tiny_params(("three_conv",))
    params["data"] = {key: value for key, value in params["data"].items() if key != "max_images"} | data
    project = make_project(shared / name / "project", params)
    for path in [shared / name, *project.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005 | (0o001 if path.is_dir() else 0))
    return project


def _csv(path: Path, rows: int = 20) -> Path:
    rng = np.random.default_rng(6)
    path.write_text("".join(",".join(map(str, [row % 2, *rng.integers(0, 256, 784)])) + "\n" for row in range(rows)))
    return path


def _ingest(project: Path, unprivileged: bool = False) -> subprocess.CompletedProcess:
    home = project.parent / "home"
    home.mkdir(exist_ok=True)
    home.chmod(0o777)
    env = tool_env(HOME=str(home), MPLCONFIGDIR=str(home), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([str(BIN / "python"), "-m", "pipeline", "ingest"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300, check=False,
                          **(as_unprivileged_user() if unprivileged else {}))


# The data lives in the project under data/source/, where ingest reads it directly (versioned with `dvc add`).
SRC = "data/source"

# case -> (data block, what to make unreadable (relative to the project), what the error names)
UNREADABLE: dict[str, tuple[dict, Callable[[Path], Path], str]] = {
    "data-directory": ({"source": "folder", "path": f"{SRC}/pets"},
                       lambda project: image_folder(project / SRC / "pets"), "pets"),
    "class-folder": ({"source": "folder", "path": f"{SRC}/pets"},
                     lambda project: image_folder(project / SRC / "pets") / "dog", "pets/dog"),
    "csv-file": ({"source": "csv", "path": f"{SRC}/digits.csv", "class_names": ["0", "1"]},
                 lambda project: _csv(project / SRC / "digits.csv"), "digits.csv"),
    "idx-directory": ({"source": "idx", "path": f"{SRC}/idx"},
                      lambda project: (project / SRC / "idx").mkdir() or project / SRC / "idx", "idx"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_input_is_named_in_one_line(shared: Path, case: str) -> None:
    """Issue 17 #7: before, an unreadable folder gave a 59-line PermissionError traceback (exit 1)."""
    data, make, names = UNREADABLE[case]
    project = _project(shared, f"unreadable-{case}", data)
    target = make(project)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055 | (0o011 if path.is_dir() else 0))
    target.chmod(0o000)
    try:
        result = _ingest(project, unprivileged=True)
    finally:
        target.chmod(0o755)
    _assert_clean_failure(result, f"{names}: permission denied", "chmod -R a+rX")
    assert not (project / "data" / "raw").exists()


def test_decompression_bomb_in_the_data_folder_fails_in_one_line(shared: Path) -> None:
    """Issue 17 #8: before, `DecompressionBombError` escaped as a traceback, exit 1."""
    project = _project(shared, "bomb", {"source": "folder", "path": f"{SRC}/pets"})
    decompression_bomb(image_folder(project / SRC / "pets") / "cat" / "bomb.png")
    result = _ingest(project)
    _assert_clean_failure(result, "pets/cat/bomb.png", "900000000 pixels")
    assert not (project / "data" / "raw").exists()


def test_csv_with_a_million_columns_fails_in_one_line(shared: Path) -> None:
    """Issue 17 #9, through the stage (the memory bound is tests/unit/test_sources.py's)."""
    project = _project(shared, "wide", {"source": "csv", "path": f"{SRC}/wide.csv", "class_names": ["0", "1"]})
    (project / SRC / "wide.csv").write_text("\n".join([",".join(["0"] * 1_000_000)] * 3) + "\n")
    result = _ingest(project)
    _assert_clean_failure(result, "wide.csv", "columns, expected 785")
    assert not (project / "data" / "raw").exists()


def test_the_unprivileged_user_really_cannot_read(shared: Path) -> None:
    """The control: the same chmod 000 keeps `nobody` out (and would not keep root out)."""
    folder = shared / "control"
    folder.mkdir()
    (folder / "secret.txt").write_text("x")
    folder.chmod(0o000)
    try:
        result = subprocess.run([str(BIN / "python"), "-c", f"open({str(folder / 'secret.txt')!r}).read()"],
                                capture_output=True, text=True, check=False, **as_unprivileged_user())
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1 and "PermissionError" in result.stderr
    assert yaml.safe_load("a: 1") == {"a": 1}
