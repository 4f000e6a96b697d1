"""One pipeline run at a time in a DVC workspace: a second `dvc exp run` fails before it writes anything.

`dvc exp run -S` writes its values into params.yaml and then releases DVC's repository lock while the
stages run. A second `dvc exp run` started meanwhile wrote its own values into the same params.yaml
under the running stages: the first trained with a foreign value and failed ("'NoneType' object is not
subscriptable"), no experiment was saved, and params.yaml held both edits. DVC guards a workspace
experiment with a read/write lock of its own (`.dvc/tmp/exps/rwlock`, the path "workspace"), but only
while it writes the parameters, not while the experiment runs.

So a stage that DVC runs in the workspace holds a read claim on "workspace" in that lock, in the name of
the DVC process running the pipeline, until that process ends (a small watcher process removes the
claim then). Every `dvc exp run` (and `--queue`) asks for that path to write its parameters: while a
pipeline runs it fails at DVC's own check, before it touches a file, showing the claim's text, which
says to use the queue. Queued experiments run in temporary copies, whose stages claim nothing here.

The claim starts with the first stage DVC runs: a second run started in the first seconds of the
first, before any of its stages has started, is not stopped (measured: docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

# The path DVC's experiments lock for the workspace (dvc/repo/experiments/queue/workspace.py and celery.py).
WORKSPACE = "workspace"
SHELLS = {"sh", "bash", "dash", "zsh", "fish", "ksh"}
QUEUE_ADVICE = ("a pipeline run is using this workspace until it ends; to run experiments side by side, queue "
                "them (dvc exp run --queue -S <key>=<value>, one per experiment) and run them with "
                "dvc queue start -j <jobs>: queued experiments run in copies and leave the workspace alone")


def lock_dir(root: Path) -> Path:
    """Where DVC keeps its experiments' read/write lock (`get_exp_rwlock`: <tmp_dir>/exps)."""
    return root / ".dvc" / "tmp" / "exps"


def _dvc_process() -> object | None:
    """The process running the pipeline's stages: this stage's nearest ancestor that is not a shell."""
    import psutil

    for parent in psutil.Process().parents():
        if parent.name() not in SHELLS:
            return parent
    return None


def _claims(lock: dict, pid: int) -> list[dict]:
    return [info for info in lock.get("read", {}).get(WORKSPACE, []) if info.get("pid") == pid]


def claim_for_dvc_run(root: Path | None = None) -> None:
    """When DVC runs this process as a stage in its workspace, claim the workspace for the DVC process
    (see the module docstring); otherwise do nothing. Best effort: a claim that cannot be made is said
    on stderr and the stage goes on."""
    if "DVC_STAGE" not in os.environ:
        return
    root = (root or Path.cwd()).resolve()
    if Path(os.environ.get("DVC_ROOT", root)).resolve() != root:
        return  # a queued or temporary experiment, run in a copy of the workspace
    try:
        _claim(root)
    except Exception as error:  # the guard must never be what breaks a run
        print(f"warning: could not claim {root} for this pipeline run ({type(error).__name__}: {error}); "
              "a concurrent dvc exp run in this workspace would not be stopped", file=sys.stderr)


def _claim(root: Path) -> None:
    from dvc.fs import localfs
    from dvc.rwlock import _acquire_read, _edit_rwlock

    dvc = _dvc_process()
    if dvc is None:
        return
    directory = lock_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"pid": dvc.pid, "cmd": f"{' '.join(dvc.cmdline())}: {QUEUE_ADVICE}"}
    with _edit_rwlock(str(directory), localfs, False) as lock:
        if _claims(lock, dvc.pid):
            return  # an earlier stage of this run claimed it
        _acquire_read(lock, info, [WORKSPACE])
    subprocess.Popen([sys.executable, "-m", "pipeline.workspace", str(dvc.pid), str(directory)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def release_when_done(pid: int, directory: Path) -> None:
    """Wait for process `pid` to end, then remove its claims on the workspace (the watcher's work)."""
    import psutil
    from dvc.fs import localfs
    from dvc.rwlock import _edit_rwlock

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait()
    with _edit_rwlock(str(directory), localfs, False) as lock:
        readers = lock.get("read", {}).get(WORKSPACE, [])
        readers[:] = [info for info in readers if info.get("pid") != pid]
        if not readers:
            lock.get("read", {}).pop(WORKSPACE, None)


if __name__ == "__main__":
    release_when_done(int(sys.argv[1]), Path(sys.argv[2]))
