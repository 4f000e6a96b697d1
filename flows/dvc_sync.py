"""The flow's link to DVC: which stages are up to date, and recording what the flow produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def up_to_date(root: Path, stage: str) -> bool:
    """True when DVC would skip `stage` (deps, params and outs match dvc.lock)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return not repo.status(targets=[stage])


def commit(root: Path) -> None:
    """Record every stage's current deps, params and outs in dvc.lock and the DVC cache
    (`dvc commit --force`): the outputs were produced by the same code from the same inputs."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(force=True)


def read_run(root: Path, variant: str) -> dict[str, Any] | None:
    path = root / "models" / variant / "run.json"
    return json.loads(path.read_text()) if path.is_file() else None


def last_decision(root: Path) -> dict[str, Any] | None:
    path = root / "reports" / "registry.json"
    return json.loads(path.read_text()) if path.is_file() else None
