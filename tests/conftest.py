"""Shared fixtures: a throwaway copy of the project (a real git + DVC repository) on tiny data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a project copy needs: the code, the pipeline definition and the DVC config (not data/models).
PROJECT_FILES = ["pipeline", "flows", "dvc.yaml", "params.yaml", ".gitignore", "pyproject.toml",
                 "data/source/README.md", ".dvc/config", ".dvc/.gitignore", "prefect.yaml", "plots/template.html",
                 "plots/package.json", "plots/package-lock.json"]

# Few hundred images, one epoch, two small variants: seconds per stage on two CPU cores.
TINY_OVERRIDES = {
    "data": {"max_images": 400},
    "train": {"epochs": 1, "batch_size": 32, "lr_schedule": "constant"},
    "register": {"min_test_accuracy": 0.3},
}
TINY_VARIANTS = ("three_conv", "relu_layers")
MAKE_VARIABLES = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")


def run(command: list[str], cwd: Path, check: bool = True, timeout: float = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with the venv's tools first on PATH; show its output when it fails.

    As from a user's shell: not inside `make test`'s make (MAKELEVEL would make a nested `make` print
    "Entering directory" lines a user never sees)."""
    inherited = {key: value for key, value in os.environ.items() if key not in MAKE_VARIABLES}
    full_env = {**inherited, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def tiny_params(variants: tuple[str, ...] = TINY_VARIANTS) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in TINY_OVERRIDES.items():
        params[key] = {**params.get(key, {}), **value}
    params["models"] = {name: params["models"][name] for name in variants}
    for model in params["models"].values():  # the tiny run's budget beats a variant's own epochs
        for key in TINY_OVERRIDES["train"]:
            model.get("train", {}).pop(key, None)
    return params


def fit(config: Any, variant: str, data: Any, work: Path, seed: int | None = None) -> Any:
    """`fit_variant` of `config`'s variant (optionally with another seed) in the work directory `work`."""
    from pipeline.checkpoint import WorkDir
    from pipeline.train import fit_variant

    resolved = config.variant(variant)
    return fit_variant(resolved if seed is None else resolved.with_seed(seed), data, WorkDir(Path(work), "test"),
                       verbose=0)


def copy_project_files(destination: Path) -> None:
    """Copy PROJECT_FILES (code, pipeline definition, DVC config) from the repository into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def make_project(destination: Path, params: dict | None = None) -> Path:
    """Copy the project into `destination`, as a fresh git + DVC repository with one commit."""
    copy_project_files(destination)
    (destination / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    # The default remote is inside the project; each copy gets its own.
    run(["git", "init", "-q", "-b", "main"], destination)
    run(["git", "config", "user.email", "tests@example.invalid"], destination)
    run(["git", "config", "user.name", "tests"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-q", "-m", "project copy"], destination)
    return destination


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project copy on tiny data (nothing run yet)."""
    return make_project(tmp_path / "project")


@pytest.fixture(autouse=True, scope="module")
def _no_inherited_tracking_uri() -> None:
    """`mlflow.set_tracking_uri` (called in-process by tests) exports MLFLOW_TRACKING_URI; remove it
    before a module's own fixtures run (autouse fixtures come first in their scope), so a module
    fixture that runs the pipeline never writes into an earlier test's MLflow store."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(autouse=True)
def _isolated_tracking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test writes to the developer's MLflow store or shares a lock directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PIPELINE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
