"""Shared helpers of the benchmarks: the machine, the load, a clean environment, project copies, statistics."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Load average (1 min) below which absolute wall times are taken as representative of this machine.
QUIET_LOAD = 0.7


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, library versions, the code's commit and the load at the time of asking."""
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown")
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    versions = {}
    for package in ("tensorflow", "keras", "mlflow", "prefect", "dvc"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": cpu_model, "cores": len(os.sched_getaffinity(0)), "ram_gb": round(memory_kb / 1024 / 1024, 1),
            "python": platform.python_version(), **versions,
            "code": commit + (" (with uncommitted edits)" if dirty else ""),
            "load_1min": load_average(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def bench_env() -> dict[str, str]:
    """Every measured subprocess: the venv first on PATH, no tracking server, Prefect API or pipeline
    setting of the developer's."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "PREFECT_", "PIPELINE_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true"})
    return env


def default_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def new_project(destination: Path, params: dict[str, Any] | None = None) -> Path:
    """A fresh project copy (git + DVC repository of the current code), as the integration tests make it."""
    from tests.conftest import make_project

    return make_project(destination, params or default_params())


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def spread(values: Iterable[float]) -> str:
    values = list(values)
    return f"{min(values):.2f}-{max(values):.2f}"
