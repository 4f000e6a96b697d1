"""Shared helpers: the machine description, load, subprocesses, project copies, small statistics."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Where project copies take the code from: the repository, or (set by run.py) a snapshot of it taken
# when the benchmarks start, so that edits made meanwhile by others do not change the measured code.
SOURCE = {"root": REPO}


# Load average (1 min) below which absolute wall times are taken as representative of this machine.
QUIET_LOAD = 0.7


def load_average() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, library versions and the load at the time of asking."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    versions = {}
    for package in ("tensorflow", "keras", "mlflow", "prefect", "dvc", "numpy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average": load_average(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench_env(extra: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """Environment of every measured subprocess: the venv first on PATH, the quiet TF log level,
    no tracking server or Prefect API of the developer's, the benchmarks package importable."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "PREFECT_", "PIPELINE_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(REPO),  # after the working directory, so a project copy's `pipeline` wins
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    if home is not None:
        env.update({"PIPELINE_LOCK_DIR": str(home / "locks"), "PREFECT_HOME": str(home / "prefect-home")})
    env.update(extra or {})
    return env


def run(command: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 1800,
        log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; raise with the tail of its output when it fails."""
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}  (cwd {cwd}, exit {result.returncode})\n{result.stdout}\n"
                         f"{result.stderr}\n")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}) in {cwd}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_python_worker(module: str, spec: dict[str, Any], work: Path, name: str, env: dict[str, str],
                      cwd: Path = REPO, timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m <module> <spec.json> <result.json>` in a fresh process; return its result."""
    work.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    result_file.unlink(missing_ok=True)
    run([sys.executable, "-m", module, str(spec_file), str(result_file)], cwd=cwd, env=env, timeout=timeout,
        log=work / "workers.log")
    return json.loads(result_file.read_text())


def worker_main(work: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker side of run_python_worker: `python -m <module> <spec.json> <result.json>`."""
    spec_file, result_file = Path(sys.argv[1]), Path(sys.argv[2])
    result_file.write_text(json.dumps(work(json.loads(spec_file.read_text())), indent=2))


def default_params() -> dict[str, Any]:
    return yaml.safe_load((SOURCE["root"] / "params.yaml").read_text())


def params_with(overrides: dict[str, Any], variants: Iterable[str] | None = None) -> dict[str, Any]:
    """The real params.yaml with dotted overrides ({'data.max_images': 1000}) and a subset of variants.

    A `train.<key>` override applies to every variant: their own settings of that key are dropped.
    """
    from pipeline.config import apply_overrides

    params = apply_overrides(default_params(), overrides)
    for key in overrides:
        if key.startswith("train."):
            for model in params["models"].values():
                model.get("train", {}).pop(key.split(".")[1], None)
    if variants is not None:
        params["models"] = {name: params["models"][name] for name in variants}
    return params


def new_project(destination: Path, params: dict[str, Any]) -> Path:
    """A fresh project copy (git + DVC repository), made by the integration tests' `make_project`."""
    from tests import conftest

    if destination.exists():
        shutil.rmtree(destination)
    saved, conftest.REPO = conftest.REPO, SOURCE["root"]
    try:
        return conftest.make_project(destination, params)
    finally:
        conftest.REPO = saved


def code_version(root: Path) -> dict[str, Any]:
    """The commit the measured code is at, and the files it differs in (uncommitted edits)."""
    def git(*arguments: str) -> str:
        result = subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.rstrip()  # not strip(): porcelain lines start with a status column

    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "subject": git("log", "-1", "--format=%s").strip(),
            "uncommitted": [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                            if line]}


def median(values: Iterable[float]) -> float:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else float("nan")


def spread(values: Iterable[float]) -> tuple[float, float]:
    values = [value for value in values if value is not None]
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def geometric_mean(values: Iterable[float]) -> float:
    values = [value for value in values if value and value > 0]
    return statistics.geometric_mean(values) if values else float("nan")


def alternating(arms: Sequence[str], round_index: int) -> list[str]:
    """Round 0: A B C ..., round 1: reversed, round 2: rotated by one, ...; so no arm is always first
    (first after a quiet spell) or always right after the same neighbour."""
    order = list(arms)
    if round_index % 2:
        order.reverse()
    shift = (round_index // 2) % len(order)
    return order[shift:] + order[:shift]


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished (waited-for) descendants, grandchildren included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """`with Clock() as clock: ...` then `clock.seconds` (wall) and `clock.child_cpu_seconds` (CPU time
    of the subprocesses that finished inside the block: on a busy machine, a steadier measure of work)."""

    def __enter__(self) -> Clock:
        self.started, self.started_cpu = time.perf_counter(), children_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.child_cpu_seconds = children_cpu_seconds() - self.started_cpu
