"""Crash safety of a fit: the work directory of one training job, and the backup Keras resumes from.

The work directory lives outside DVC's outputs (`.cache/train/<variant>/`, `Layout.work_dir`),
because `dvc repro` deletes a stage's outputs before rerunning it:
- `backup/`: Keras `BackupAndRestore` state, so a killed run continues from its last finished epoch,
  and `backup_manifest.json`, the sha256 of that state, which tells a complete backup from a damaged one;
- `history.csv`: the per-epoch metrics, appended, so a resumed run keeps the epochs before the kill;
- `trained/`: the finished model, kept until it is published and tracked, so a failure after the fit
  never costs a retraining.
The work directory is removed once the stage has fully succeeded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StorageError
from pipeline.io import write_json, write_text
from pipeline.lineage import file_sha256

BACKUP_MANIFEST = "backup_manifest.json"


class WorkDir:
    """The crash-safety state of one training job, identified by its fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.backup = path / "backup"
        self.history = path / "history.csv"
        self.manifest = path / BACKUP_MANIFEST
        self.trained = path / "trained"
        self.run_facts = path / "run.json"  # seconds and resume of the fit that made `trained/`

    def open(self) -> str | None:
        """Discard state left by a different job; return a note on what is being reused."""
        stamp = self.path / "fingerprint"
        if stamp.is_file() and stamp.read_text().strip() != self.fingerprint:
            shutil.rmtree(self.path)
            note = "discarded interrupted state of a different configuration"
        elif self.has_trained():
            note = f"reusing the finished training in {self.trained} (it was not published yet)"
        elif self.backup.is_dir() and any(self.backup.iterdir()):
            note = f"found the backup of an interrupted run in {self.backup}"  # check_backup judges it
        else:
            note = None
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(stamp, self.fingerprint + "\n")
        return note

    def has_trained(self) -> bool:
        return (self.trained / "training.json").is_file()

    def for_seed(self, seed: int) -> WorkDir:
        """The work directory of an extra seed's fit (multi-seed repeats), inside this one."""
        return WorkDir(self.path / f"seed-{seed}", self.fingerprint)

    def discard_backup(self) -> None:
        shutil.rmtree(self.backup, ignore_errors=True)
        self.history.unlink(missing_ok=True)  # its rows belong to the abandoned attempt

    def check_space(self, needed: int, epochs_done: int) -> None:
        """Before Keras writes the backup of an epoch: fail with the bytes needed when its disk lacks them.

        A disk that fills while Keras writes its backup gave h5py errors and a segfault (exit 139); a
        check first fails with one line, and the backup of the previous epoch stays complete, so the
        rerun resumes from it.
        """
        self.backup.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.backup).free
        if free < needed:
            kept = f"the backup of epoch {epochs_done - 1}" if epochs_done > 1 else "no backup yet"
            raise StorageError(
                f"{self.backup}: the backup of epoch {epochs_done} needs {needed:,} bytes, and its disk has "
                f"{free:,} free; free {needed - free:,} bytes or more and rerun the stage (it resumes from "
                f"{kept})")

    def record_backup(self, epochs_done: int) -> None:
        """Called right after Keras wrote its backup of an epoch: the manifest that vouches for it."""
        write_json(self.manifest, {"epoch": epochs_done, "files": _digests(self.backup)})

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# HDF5 and zip overhead, the training metadata and the manifest: well under this on the seed variants.
BACKUP_OVERHEAD_BYTES = 1 << 20


def backup_bytes(model: Any) -> int:
    """What a Keras backup of `model` takes on disk, at most: every model and optimizer variable (Keras
    backs up the optimizer's state for an exact resume) and BACKUP_OVERHEAD_BYTES."""
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
    return sum(int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables) \
        + BACKUP_OVERHEAD_BYTES


def _digests(directory: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(directory.iterdir()) if path.is_file()}


def check_backup(work: WorkDir, epochs: int) -> tuple[int, str | None]:
    """The epoch an interrupted run's backup resumes from, or why it cannot be trusted.

    Keras overwrites its backup files in place at each epoch end and loads whatever it finds: a kill
    during that write, or later damage, would resume from the weights of one epoch labelled with
    another, or restart from epoch 0 with trained weights while looking like a resume. The manifest
    written after each complete backup is what makes a backup trustworthy.

    Returns:
        (epoch, None) for a usable backup (0 when there is none); (0, reason) for an unusable one.
    """
    if not work.backup.is_dir() or not any(work.backup.iterdir()):
        return 0, None
    try:
        manifest = json.loads(work.manifest.read_text())
    except (OSError, ValueError):
        return 0, f"no readable {BACKUP_MANIFEST} vouches for it (killed while Keras wrote it?)"
    changed = set(manifest.get("files", {}).items()) ^ set(_digests(work.backup).items())
    if changed:
        names = ", ".join(sorted({name for name, _ in changed}))
        return 0, f"{names}: not the files recorded when the backup was written (truncated or modified)"
    epoch = manifest.get("epoch")
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        return 0, f"it records epoch {epoch!r}, not one of 1..{epochs}"
    return epoch, None
