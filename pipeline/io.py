"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash (or SIGKILL) mid-write leaves the previous file or no file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `target` on success.

    Args:
        target: the final file.
        suffix: suffix of the temporary file (some writers, e.g. keras and matplotlib, pick the
            format from it); defaults to the target's suffix.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix
    )
    os.close(handle)
    temporary_path = Path(temporary)
    os.chmod(temporary_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_text(text)
    return Path(target)


def write_json(target: str | Path, payload: Any) -> Path:
    return write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_with(target: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(temporary_path)` and rename the result onto `target`."""
    with atomic_path(target) as temporary:
        writer(temporary)
    return Path(target)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in whole when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        backup = target.with_name(f".{target.name}.old")
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
            target.rename(backup)
        staging.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def describe_bytes(count: int) -> str:
    """A byte count for a message: "1.2 GB (1,234,567,890 bytes)" (decimal units, as `df -H` shows them)."""
    if abs(count) < 1000:
        return f"{count:,} bytes"
    exponent = min(4, int(math.log10(abs(count))) // 3)
    return f"{count / 1000 ** exponent:.1f} {('KB', 'MB', 'GB', 'TB')[exponent - 1]} ({count:,} bytes)"
