"""Atomic writes: a failure mid-write leaves the old file, never a partial one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io import atomic_directory, atomic_path, write_json, write_text


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = write_text(tmp_path / "report.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    target = write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert target.read_text() == '{\n  "x": 1\n}\n'
    assert target.stat().st_mode & 0o044 == 0o044


def test_directory_swapped_in_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "one").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "two").write_text("2")
        raise RuntimeError("crash")
    assert sorted(path.name for path in target.iterdir()) == ["one"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
