"""A memory limit for benchmark processes: a cgroup v1 memory group (issue 16, data larger than memory).

    with MemoryGroup.create(1.5e9) as group:
        process = subprocess.Popen(command, preexec_fn=group.join)   # the child and all it starts
        ...
        group.usage()      # {"limit_bytes", "peak_bytes", "failcnt", "oom_kills", ...}

The kernel holds everything the processes in the group use, resident memory and the page cache of the
files they read or write, under `memory.limit_in_bytes`: when they need more it reclaims clean page
cache first (a data file larger than the limit streams through it), and when resident memory alone
would pass the limit it OOM-kills a process of the group. `peak_bytes` (memory.max_usage_in_bytes)
therefore counts page cache too; the resident high-water mark of a process is its ru_maxrss. The two
do not add up: a page is charged to the group that first brought it into memory, so the shared
libraries TensorFlow maps, already cached by an earlier process outside the group, are in a
process's RSS but not in the group's usage (measured: a 6,000-image train stage, 955 MB ru_maxrss,
732 MB group peak).

Needs write access to a cgroup v1 memory hierarchy (/sys/fs/cgroup/memory, as root). On a cgroup v2
machine (one unified /sys/fs/cgroup with a cgroup.controllers file) this fails and says to use
`systemd-run --scope -p MemoryMax=... -p MemorySwapMax=0` around the benchmark instead: the same
limit, set from outside.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

V1_MEMORY = Path("/sys/fs/cgroup/memory")


class CgroupError(RuntimeError):
    """The memory limit cannot be set up on this machine; the message says why and what to do."""


@dataclass
class MemoryGroup:
    """One cgroup v1 memory group; `join` puts the calling process in it (use as a Popen preexec_fn)."""

    path: Path
    limit_bytes: int

    @classmethod
    def create(cls, limit_bytes: float, name: str | None = None, hierarchy: Path = V1_MEMORY) -> MemoryGroup:
        if not (hierarchy / "memory.limit_in_bytes").is_file():
            unified = Path("/sys/fs/cgroup/cgroup.controllers").is_file()
            raise CgroupError(
                f"--memory-limit needs a cgroup v1 memory hierarchy at {hierarchy}, and there is none"
                + (" (this machine has cgroup v2): run the benchmark under `systemd-run --scope -p MemoryMax=<bytes> "
                   "-p MemorySwapMax=0` instead" if unified else ""))
        path = hierarchy / (name or f"bench-scale-{os.getpid()}")
        try:
            path.mkdir(exist_ok=True)
            (path / "memory.limit_in_bytes").write_text(str(int(limit_bytes)))
            swap = path / "memory.memsw.limit_in_bytes"  # present with swap accounting: no swapping around the limit
            if swap.is_file():
                swap.write_text(str(int(limit_bytes)))
        except OSError as error:
            raise CgroupError(f"cannot create the memory group {path} ({error.strerror}): --memory-limit needs "
                              "root, or write access to that hierarchy") from error
        return cls(path, int((path / "memory.limit_in_bytes").read_text()))

    def join(self) -> None:
        """Move this process (and every process it starts later) into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        (self.path / "memory.failcnt").write_text("0")

    def usage(self) -> dict[str, Any]:
        """The limit, the peak since the last reset (resident memory and page cache), hits and OOM kills."""
        read = lambda name: (self.path / name).read_text()  # noqa: E731
        control = dict(line.split() for line in read("memory.oom_control").splitlines())
        stat = dict(line.split() for line in read("memory.stat").splitlines())
        return {"limit_bytes": int(read("memory.limit_in_bytes")), "peak_bytes": int(read("memory.max_usage_in_bytes")),
                "failcnt": int(read("memory.failcnt")), "oom_kills": int(control.get("oom_kill", 0)),
                "swap_bytes": int(stat.get("swap", 0))}

    def remove(self, wait_seconds: float = 30.0) -> None:
        """Delete the group once its processes have ended: the kernel refuses while any is left, and a
        process DVC left behind (its updater or analytics, measured: a few seconds) may still be exiting."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                self.path.rmdir()
                return
            except OSError as error:
                if error.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove the memory group {self.path} ({error.strerror}): is a process "
                                      f"of it still running? `cat {self.path}/cgroup.procs`") from error
                time.sleep(0.2)

    def __enter__(self) -> MemoryGroup:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()
