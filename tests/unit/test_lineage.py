"""The git commit a run records: dirty only when the sources differ from HEAD, with a hash of the diff."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.lineage import DIRTY_MARK, git_commit


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for name, text in {"pipeline/stage.py": "x = 1\n", "params.yaml": "seed: 1\n", "dvc.lock": "a\n",
                       "reports/metrics/v.json": "{}\n", ".gitignore": "__pycache__/\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for command in (["init", "-q"], ["add", "-A"],
                    ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "start"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


def head(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_outputs_the_pipeline_rewrites_do_not_make_a_run_dirty(repository: Path) -> None:
    (repository / "dvc.lock").write_text("b\n")
    (repository / "reports" / "metrics" / "v.json").write_text('{"test_accuracy": 0.9}\n')
    (repository / "pipeline" / "__pycache__").mkdir()
    (repository / "pipeline" / "__pycache__" / "stage.pyc").write_bytes(b"\0")
    assert git_commit(repository) == head(repository)


def test_changed_sources_are_dirty_and_told_apart(repository: Path) -> None:
    (repository / "pipeline" / "stage.py").write_text("x = 2\n")
    first = git_commit(repository)
    assert first.startswith(head(repository) + DIRTY_MARK) and len(first) == 40 + len(DIRTY_MARK) + 12
    assert git_commit(repository) == first  # the same change, the same mark
    (repository / "params.yaml").write_text("seed: 2\n")
    second = git_commit(repository)
    assert second.startswith(head(repository) + DIRTY_MARK) and second != first


def test_an_untracked_source_file_is_dirty(repository: Path) -> None:
    (repository / "pipeline" / "new_stage.py").write_text("y = 1\n")
    assert DIRTY_MARK in git_commit(repository)


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
