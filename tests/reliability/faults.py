"""Helpers for causing faults for real: background processes, SIGKILL, throwaway servers.

Every process started here leads its own process group (so a kill reaches its children) and is
stopped on exit whatever happens, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

from tests.conftest import BIN

T = TypeVar("T")
SERVER_START_SECONDS = 180  # a cold start on two CPUs shared with other test runs


def tool_env(**extra: str) -> dict[str, str]:
    """The test process's environment with the venv's tools first on PATH and no telemetry."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2",
            "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1,
             alive: subprocess.Popen | None = None, log: Path | None = None) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` s,
    or as soon as the process `alive` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process exited ({alive.returncode}) before {what}:\n{tail(log) if log else ''}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail(log) if log else ''}")


def start(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A background process leading a new process group, output appended to `log`."""
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env or tool_env(), stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """`kill -9` the process and everything in its group (and descendants that left the group)."""
    if process.returncode is not None:
        return  # already reaped: its PID (and group id) may belong to someone else by now
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


@contextlib.contextmanager
def running(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`start`, and SIGKILL the whole group on exit (a no-op when the test already killed it)."""
    process = start(command, cwd, log, env)
    try:
        yield process
    finally:
        kill_group(process)


def http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200
    return False


def mlflow_server_command(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    """A plain MLflow tracking server (no auth) on loopback, serving its artifacts from `artifacts`."""
    return [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
            "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> float:
    """Wait for `url` to answer 200; return the seconds it took."""
    started = time.monotonic()
    wait_for(lambda: http_ok(url), SERVER_START_SECONDS, f"{url} to answer 200", interval=0.5, alive=process,
             log=log)
    return time.monotonic() - started


def tree_md5(root: Path) -> dict[str, str]:
    """md5 of every file under `root`, by relative path."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digests[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests


# Linux capabilities that let root read, enter and write what file permissions forbid.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
PR_CAPBSET_DROP = 24


def as_unprivileged_user() -> dict:
    """subprocess.run keyword arguments that make file permissions apply to the child for real: root
    reads a chmod 000 file, so a child of root gives up (from its capability bounding set, before it
    execs) the two capabilities that override them; it stays root otherwise, so the interpreter and
    the venv remain reachable. Not root: permissions apply already, nothing to drop."""
    if os.geteuid() != 0:
        return {}

    def drop() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return {"preexec_fn": drop}


def world_readable_dir(prefix: str) -> Path:
    """A new directory every user may enter and read, so an unprivileged child can reach the files in it
    (pytest's own temporary directories are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
