"""The flow's link to DVC: which stages are stale, and recording what the flow produced."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pipeline.layout import Layout


def stale_stages(root: Path, variants: list[str]) -> set[str]:
    """Stages `dvc repro` would run: those DVC reports changed, plus everything downstream of them.

    The `evaluate` stage scores every variant in one process; for the flow, which scores variants
    as separate tasks, `evaluate@<variant>` entries name the variants that need scoring: all of them
    when the stage itself changed (its code, params or the data), else those retrained.
    """
    from dvc.repo import Repo

    # DVC resolves output paths against the working directory, so ask from inside the project.
    with contextlib.chdir(root), Repo(".") as repo:
        changed = set(repo.status())
    stale = set(changed)
    if "ingest" in stale:
        stale.add("prepare")
    for variant in variants:
        if "prepare" in stale:
            stale.add(f"train@{variant}")
        if "prepare" in stale or "evaluate" in changed or f"train@{variant}" in stale:
            stale.add(f"evaluate@{variant}")
    if any(stage.startswith("evaluate@") for stage in stale):
        stale |= {"evaluate", "compare", "register"}
    if any(stage.startswith("train@") for stage in stale):
        stale.add("register")
    return stale


def commit(root: Path) -> None:
    """Record every stage's current deps, params and outs in dvc.lock and the DVC cache
    (`dvc commit --force`): the outputs were produced by the same code from the same inputs."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        repo.commit(force=True)


def git_commit(root: Path, message: str) -> bool:
    """Commit what DVC and the pipeline track in git (dvc.lock, the data's .dvc files, metrics and
    reports); True when there was something to commit. Other changes of the working tree stay unstaged."""
    import subprocess

    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, check=True, timeout=60)

    git("add", "--", "dvc.lock", "data/source", "reports")
    if not git("diff", "--cached", "--name-only").stdout.strip():
        return False
    git("commit", "-q", "-m", message)
    return True


def read_run(root: Path, variant: str) -> dict[str, Any] | None:
    """This machine's record of the variant's last training run (MLflow run id, seconds), if any."""
    path = Layout(root).run_record(variant)
    return json.loads(path.read_text()) if path.is_file() else None


def last_decision(root: Path) -> dict[str, Any] | None:
    path = Layout(root).registry_file
    return json.loads(path.read_text()) if path.is_file() else None
