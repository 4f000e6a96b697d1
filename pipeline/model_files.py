"""Model files: saving `.keras` files byte-for-byte reproducibly, loading them safely, hashing them.

A `.keras` file as Keras writes it differs between two saves of the same model: `metadata.json`
records the time of the save, `config.json` numbers shared objects by their memory address
(`shared_object_id`), and the zip entries carry timestamps. `save_model` rewrites those three, so the
same weights give the same bytes: DVC's hash of `models/` and the sha256 recorded at registration
then identify the model itself, and a rerun with the same inputs leaves `dvc.lock` unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ModelFileError, StorageError
from pipeline.io import atomic_path, read_json, write_json, write_text
from pipeline.lineage import file_sha256

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def _renumber_shared_objects(node: Any, numbers: dict[int, int]) -> Any:
    """Replace each `shared_object_id` (a memory address) by its order of first appearance."""
    if isinstance(node, dict):
        renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in node.items()}
        if "shared_object_id" in node:
            renumbered["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers) + 1)
        return renumbered
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    return node


def canonical_entry(name: str, content: bytes) -> bytes:
    """An archive member with its run-to-run differences removed (see the module docstring)."""
    if name == "metadata.json":
        metadata = json.loads(content)
        metadata.pop("date_saved", None)
        return json.dumps(metadata).encode()
    if name == "config.json":
        return json.dumps(_renumber_shared_objects(json.loads(content), {})).encode()
    return content


def canonicalize(source: Path, target: Path) -> None:
    """Rewrite the `.keras` archive `source` as `target` with canonical members and fixed timestamps."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as canonical:
        for member in archive.infolist():
            info = zipfile.ZipInfo(member.filename, date_time=ZIP_EPOCH)
            info.compress_type = member.compress_type
            info.external_attr = 0o644 << 16
            canonical.writestr(info, canonical_entry(member.filename, archive.read(member)))


def save_model(model: Any, target: Path) -> Path:
    """Save a Keras model as a reproducible `.keras` file, atomically; return the path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".saving-") as scratch:
            raw = Path(scratch) / "model.keras"
            model.save(raw)
            with atomic_path(target) as canonical:
                canonicalize(raw, canonical)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise StorageError(f"{target.parent}: no space left to save {target.name} "
                           f"({shutil.disk_usage(target.parent).free:,} bytes free); free some and rerun") from None
    return target


def content_digest(path: str | Path) -> str:
    """sha256 over a `.keras` file's architecture (canonical config.json) and every stored array, read
    with h5py, without TensorFlow: equal for two files that hold the same model, however saved."""
    import h5py
    import numpy as np

    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as archive:
            digest.update(canonical_entry("config.json", archive.read("config.json")))
            weights_file = io.BytesIO(archive.read("model.weights.h5"))
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path} is not a readable .keras file ({error})") from None

    def add(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(item[()]).tobytes())

    with h5py.File(weights_file, "r") as weights:
        weights.visititems(add)  # in name order: deterministic
    return digest.hexdigest()


def load_model_checked(path: Path, expected_sha256: str | None = None) -> Any:
    """Load a `.keras` file in safe mode, after checking its sha256 when one was recorded."""
    import keras

    path = Path(path)
    if path.suffix != ".keras":
        raise ModelFileError(f"{path}: only the .keras format is loaded (not {path.suffix or 'no suffix'}); "
                             "legacy .h5/SavedModel files can execute code")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise ModelFileError(f"{path}: sha256 {actual} differs from the recorded {expected_sha256}; "
                                 "the file was modified or corrupted after training")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, zipfile.BadZipFile) as error:
        # Safe mode refuses a Lambda with ValueError but an object from a module outside Keras with
        # TypeError; either way the caller gets one error naming the file.
        raise ModelFileError(f"{path}: refused by Keras safe mode or unreadable "
                             f"({type(error).__name__}: {error})") from error


@dataclass
class TrainedModel:
    """A trained model and what is known of it.

    `training` is written as training.json in the model's DVC output and holds only what the same
    inputs reproduce; `run` holds what differs from run to run (seconds, a resume), which goes to
    MLflow and the run record instead.
    """

    model: Any  # keras.Model
    history: dict[str, list[float]]
    summary: str
    training: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


TRAINED_FILES = ("model.keras", "history.json", "summary.txt", "training.json")


def save_trained(trained: TrainedModel, directory: Path) -> None:
    """Write model.keras, history.json, summary.txt and training.json (each atomically) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(trained.model, directory / "model.keras")
    trained.training["model_sha256"] = file_sha256(directory / "model.keras")  # checked when loaded
    trained.training["model_digest"] = content_digest(directory / "model.keras")  # the same for MLflow's copy
    write_json(directory / "history.json", trained.history)
    write_text(directory / "summary.txt", trained.summary + "\n")
    write_json(directory / "training.json", trained.training)


def load_trained(directory: Path) -> TrainedModel:
    """Read back what `save_trained` wrote; the model file must match its recorded sha256."""
    training = read_json(directory / "training.json")
    model = load_model_checked(directory / "model.keras", training.get("model_sha256"))
    return TrainedModel(model=model, history=read_json(directory / "history.json"),
                        summary=(directory / "summary.txt").read_text().rstrip("\n"), training=training)
